"""`gpt-finetune sweep` on a tiny model: one folder per run, runs ranked by validation loss, a plot and a table;
rerunning skips finished runs and finishes an unfinished one from its checkpoint."""
import json

from conftest import run_cli
from gpt_finetune.cli import main


def test_sweep_ranks_plots_and_resumes(tmp_path, monkeypatch, capsys):
    from gpt_finetune.model import tiny_model
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny model, busy 2-core machine
    model, tok = tiny_model("llama")
    (llama := tmp_path / "llama").mkdir(); model.save_pretrained(llama); tok.save_pretrained(llama)
    data, out = tmp_path / "pairs.json", tmp_path / "sweep"
    data.write_text(json.dumps([{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(40)]))
    args = ["sweep", "--data", data, "--model", llama, "--output-dir", out, "--lr-grid", "3e-4,3e-3",
            "--epochs-grid", "2", "--lora-r-grid", "0,4", "--eval-every", 2, "--log-every", 2,
            "--batch-size", 8, "--precision", "fp32",
            "--keep-checkpoints"]  # a finished run deletes its checkpoints unless asked to keep them
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    names = ["lr0.0003-ep2-r0", "lr0.0003-ep2-r4", "lr0.003-ep2-r0", "lr0.003-ep2-r4"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names  # one folder per run
    results = [json.loads((out / n / "result.json").read_text()) for n in names]
    losses = sorted(r["best_eval_loss"] for r in results)
    table = (out / "sweep.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].startswith("| rank | run |")
    assert [float(row.split("|")[6]) for row in table[2:]] == [round(l, 4) for l in losses]  # ranked by validation loss
    assert res.stdout.count("sweep: run") == 4
    assert f"best: {table[2].split('|')[2].strip()}" in res.stdout
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert all(r["valid_curve"] and r["train_curve"] for r in results)
    # Rerun after "losing" one run's result: only that run trains again (from its last checkpoint),
    # the rest are skipped.
    (out / names[1] / "result.json").unlink()
    capsys.readouterr()
    assert main(list(map(str, args))) == 0
    printed = capsys.readouterr().out
    assert printed.count("sweep: run") == 1 and f"sweep: run 2/4: {names[1]}" in printed
    again = json.loads((out / names[1] / "result.json").read_text())
    assert again["best_eval_loss"] == results[1]["best_eval_loss"] and again["resumed_from"] == again["steps"]
