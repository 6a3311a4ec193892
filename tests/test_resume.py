"""Kill a real training process with SIGKILL after a checkpoint, resume it, and get the uninterrupted run's model;
resuming from nothing, a corrupt checkpoint or another model's checkpoint is a one-line error that writes nothing."""
import json, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from gpt_finetune.cli import main

SCRIPT = [sys.executable, str(Path(__file__).parent / "tiny_train.py")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Tiny models run fastest on one thread per process, above all on a busy 2-core machine."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _steps(path: Path) -> dict:
    "Optimizer step -> example ids it trained on; a later line for the same step (redone after resume) wins."
    return {s["step"]: s["ids"] for s in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    subprocess.run([*SCRIPT, "--out", out], check=True, capture_output=True, timeout=300)
    return out


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path):
    proc = subprocess.Popen([*SCRIPT, "--out", tmp_path, "--sleep", "0.25"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "checkpoints" / "checkpoint-8" / "trainer_state.json"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.05)
    time.sleep(0.3)  # let it get a step or two past the checkpoint: that work is lost and must be redone
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(_steps(tmp_path / "steps-rank0.jsonl"))
    assert 8 <= killed_at < 24 and not (tmp_path / "final.pt").exists()
    # A half-written later checkpoint (killed while saving: no trainer state yet) must not be picked.
    half = tmp_path / "checkpoints" / "checkpoint-12"
    if not (half / "trainer_state.json").exists():
        shutil.rmtree(half, ignore_errors=True)
        shutil.copytree(tmp_path / "checkpoints" / "checkpoint-8", half)
        (half / "trainer_state.json").unlink()
    res = subprocess.run([*SCRIPT, "--out", tmp_path, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    stats, full = (json.loads((d / "stats.json").read_text()) for d in (tmp_path, uninterrupted))
    resumed_from = stats["resumed_from"]
    assert resumed_from in (8, 12) and resumed_from <= killed_at
    a, b = torch.load(tmp_path / "final.pt"), torch.load(uninterrupted / "final.pt")
    for k in a: assert torch.equal(a[k], b[k]), k  # bit-identical weights
    assert stats["train"] == full["train"] and stats["steps"] == full["steps"] == 24  # the same loss at every step
    steps, ref = _steps(tmp_path / "steps-rank0.jsonl"), _steps(uninterrupted / "steps-rank0.jsonl")
    assert steps == ref  # every step saw the same examples as the uninterrupted run
    for epoch in (range(1, 13), range(13, 25)):  # and each epoch saw every example exactly once
        assert sorted(i for s in epoch for i in steps[s]) == list(range(48))


def _run_args(data, model, out, *extra):
    return ("run", "--data", data, "--model", model, "--output-dir", out, "--epochs", 1, "--max-new-tokens", 4,
            "--eval-every", 0, "--save-every", 2, "--precision", "fp32", *extra)


def _snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    "A finished `gpt-finetune run` on a tiny Llama, with its checkpoints."
    from gpt_finetune.model import tiny_model
    tmp = tmp_path_factory.mktemp("cli")
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp / "llama"); tok.save_pretrained(tmp / "llama")
    data = tmp / "pairs.json"
    data.write_text(json.dumps([{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(30)]))
    res = run_cli(*_run_args(data, tmp / "llama", tmp / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp


def _main(capsys, *args) -> tuple[int, list[str]]:
    "The CLI's `main` in this process (the error paths are quick; starting a process costs more than they do)."
    capsys.readouterr()
    code = main(list(map(str, args)))
    return code, capsys.readouterr().err.strip().splitlines()


def test_resume_without_checkpoint_is_one_line(trained_run, tmp_path, capsys):
    code, err = _main(capsys, *_run_args(trained_run / "pairs.json", trained_run / "llama", tmp_path / "empty", "--resume"))
    assert code == 2
    assert err == [f"gpt-finetune: error: {tmp_path / 'empty' / 'checkpoints'}: no complete checkpoint to resume from"]
    assert not (tmp_path / "empty").exists()


def _one_line_error_and_nothing_written(capsys, data, model, out, expected: str):
    before = _snapshot(out)
    code, err = _main(capsys, *_run_args(data, model, out, "--resume"))
    assert code == 2 and len(err) == 1 and err[0].startswith("gpt-finetune: error: ") and expected in err[0], err
    assert _snapshot(out) == before


def test_resume_from_corrupt_checkpoint_is_one_line(trained_run, tmp_path, capsys):
    out = tmp_path / "out"; shutil.copytree(trained_run / "out", out)
    last = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    w = last / "model.safetensors"; w.write_bytes(w.read_bytes()[:1000])
    _one_line_error_and_nothing_written(capsys, trained_run / "pairs.json", trained_run / "llama", out, f"{w}: corrupt weights")


def test_resume_from_another_models_checkpoint_is_one_line(trained_run, tmp_path, capsys):
    from gpt_finetune.model import tiny_model
    out = tmp_path / "out"; shutil.copytree(trained_run / "out", out)
    (gpt2 := tmp_path / "gpt2").mkdir()
    model, tok = tiny_model("gpt2"); model.save_pretrained(gpt2); tok.save_pretrained(gpt2)
    _one_line_error_and_nothing_written(capsys, trained_run / "pairs.json", gpt2, out, "made for another model")


def test_cli_resume_continues_a_run(trained_run, tmp_path):
    "`run --resume` on a run cut short: the CLI picks the last complete checkpoint and trains the remaining steps."
    out = tmp_path / "out"; shutil.copytree(trained_run / "out", out)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (ckpts[-1] / "trainer_state.json").unlink()  # the newest one was being written when the run died
    res = run_cli(*_run_args(trained_run / "pairs.json", trained_run / "llama", out, "--resume"))
    assert res.returncode == 0, res.stderr[-3000:]
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["resumed_from"] == int(ckpts[-2].name.split("-")[1]) and train["steps"] == int(ckpts[-1].name.split("-")[1])
