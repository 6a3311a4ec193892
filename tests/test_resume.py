"""Kill a real training process with SIGKILL after a checkpoint, resume it, and get the uninterrupted run's model;
resuming from nothing, a corrupt checkpoint, another model's or another run's checkpoint is a one-line error that
writes nothing. Early stopping keeps the best weights in memory (no checkpoint per evaluation), the run blends them
toward the starting weights and reports the blended weights' own validation loss, and a successful run deletes its
checkpoints unless asked to keep them."""
import json, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

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
    proc = subprocess.Popen([*SCRIPT, "--out", tmp_path, "--sleep", "0.25"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
            "--eval-every", 0, "--save-every", 2, "--precision", "fp32", "--keep-checkpoints", *extra)


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
    code, err = _main(capsys, *_run_args(trained_run / "pairs.json", trained_run / "llama", tmp_path / "empty",
                                         "--resume"))
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
    _one_line_error_and_nothing_written(capsys, trained_run / "pairs.json", trained_run / "llama", out,
                                        f"{w}: corrupt weights")


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
    assert (train["resumed_from"] == int(ckpts[-2].name.split("-")[1])
            and train["steps"] == int(ckpts[-1].name.split("-")[1]))


def _tiny_run(out, ds, valid=None, callbacks=None, resume=None, **kw):
    from gpt_finetune.model import tiny_model
    from gpt_finetune.options import TrainConfig
    from gpt_finetune.train import finetune
    model, tok = tiny_model("llama")
    cfg = TrainConfig(**{"output_dir": str(out), "epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "log_every": 1,
                         "warmup": 0, "progress": False, "precision": "fp32", "seed": 7, "eval_every": 0,
                         "save_every": 2, **kw})
    return model, finetune(model, tok, ds, valid, cfg, callbacks=callbacks, resume=resume)


@pytest.fixture(scope="module")
def tiny_data():
    from gpt_finetune.data import default_data_path, tokenize_records
    from gpt_finetune.formats import load_records
    from gpt_finetune.model import tiny_model
    _, tok = tiny_model("llama")
    records = load_records(default_data_path()).records
    return tokenize_records(records[:16], tok), tokenize_records(records[16:24], tok)


class _Saves(TrainerCallback):
    "Counts checkpoint saves and keeps a copy of the weights after every evaluation."
    def __init__(self): self.saves, self.weights = 0, {}
    def on_save(self, args, state, control, **kw): self.saves += 1
    def on_train_begin(self, args, state, control, model=None, **kw):
        self.weights[0] = {n: p.detach().clone() for n, p in model.named_parameters()}
    def on_evaluate(self, args, state, control, model=None, **kw):
        self.weights[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}


def _valid_loss(model, valid) -> float:
    "The answer-token loss of `model` on `valid`, computed without the Trainer."
    from gpt_finetune.data import PackedCollator
    from gpt_finetune.train import answer_loss_sum
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(valid), 4):
            s, k, _ = answer_loss_sum(model, PackedCollator()([valid[j] for j in range(i, min(i + 4, len(valid)))]))
            total, n = total + s.item(), n + k
    return total / n


def test_early_stopping_keeps_best_weights_in_memory(tiny_data, tmp_path):
    train, valid = tiny_data
    seen = _Saves()
    model, stats = _tiny_run(tmp_path, train, valid, [seen], epochs=30, eval_every=2, early_stopping=2, save_every=0,
                             learning_rate=2e-2)
    losses = dict(stats["history"].valid)
    assert seen.saves == 0 and not list(tmp_path.glob("checkpoint-*"))  # no checkpoint per evaluation
    assert stats["steps"] < 30 * 4 and stats["best_step"] == min(losses, key=losses.get) < stats["steps"]
    assert stats["trained_eval_loss"] == pytest.approx(min(losses.values()))
    best, start = seen.weights[stats["best_step"]], seen.weights[0]
    for n, p in model.named_parameters():  # the best put back, then blended toward the start (`blend`, 0.85)
        torch.testing.assert_close(p, start[n] + 0.85 * (best[n] - start[n]), rtol=0, atol=1e-6, msg=n)
    assert stats["blend"] == 0.85 and stats["final_eval_loss"] == pytest.approx(_valid_loss(model, valid), rel=1e-4)
    assert stats["final_eval_loss"] != pytest.approx(stats["trained_eval_loss"])  # the blended weights' own loss
    assert stats["eval_s"] > 0 and stats["checkpoint_s"] == 0 and stats["train_s"] > 0
    assert stats["train_s"] + stats["eval_s"] <= stats["runtime_s"] + 0.5


def test_checkpoints_removed_after_success_unless_kept(tiny_data, tmp_path):
    train, _ = tiny_data
    _, stats = _tiny_run(tmp_path / "default", train)
    assert not list((tmp_path / "default").glob("checkpoint-*")) and stats["checkpoint_bytes_freed"] > 0
    assert stats["checkpoint_s"] > 0  # it did write them (every 2 steps) while training
    _, stats = _tiny_run(tmp_path / "kept", train, keep_checkpoints=True)
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "kept").glob("checkpoint-*")) == [6, 8]  # save_limit 2
    assert stats["checkpoint_bytes_freed"] == 0


def test_a_default_run_saves_only_at_save_every(tiny_data, tmp_path):
    "The Trainer's extra save at the last step (8, not a multiple of 3) is skipped when checkpoints are not kept."
    train, _ = tiny_data
    seen = _Saves()
    _tiny_run(tmp_path / "default", train, None, [seen], save_every=3)
    assert seen.saves == 2  # steps 3 and 6
    kept = _Saves()
    _tiny_run(tmp_path / "kept", train, None, [kept], save_every=3, keep_checkpoints=True)
    assert kept.saves == 3  # 3, 6, and the last step when the checkpoints are kept


def test_save_limit_counts_only_this_runs_checkpoints(tiny_data, tmp_path):
    "An earlier run's kept checkpoints (6, 8) are neither counted nor deleted; this run keeps its own two newest."
    train, _ = tiny_data
    _tiny_run(tmp_path, train, keep_checkpoints=True)  # leaves 6 and 8 (save_limit 2)
    _tiny_run(tmp_path, train, keep_checkpoints=True, epochs=1, save_every=1)  # 4 steps, a checkpoint at each
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == [3, 4, 6, 8]


class _Crash(TrainerCallback):
    def __init__(self, at): self.at = at
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at: raise KeyboardInterrupt("killed")


def test_resume_never_picks_an_earlier_runs_checkpoint(tiny_data, tmp_path):
    from gpt_finetune.train import CheckpointError, find_checkpoint
    train, _ = tiny_data
    _tiny_run(tmp_path, train, keep_checkpoints=True, save_limit=0)  # an earlier run left checkpoints 2..8
    # this run died at step 3
    with pytest.raises(KeyboardInterrupt): _tiny_run(tmp_path, train, callbacks=[_Crash(3)], save_limit=0)
    assert find_checkpoint(tmp_path).name == "checkpoint-2"  # its own, not the earlier run's checkpoint-8
    _, stats = _tiny_run(tmp_path, train, resume=True)
    assert stats["resumed_from"] == 2 and stats["steps"] == 8
    earlier = _earlier(tmp_path, train)
    # died before its first checkpoint
    with pytest.raises(KeyboardInterrupt): _tiny_run(tmp_path / "b", train, callbacks=[_Crash(1)])
    shutil.copytree(earlier, tmp_path / "b" / "checkpoint-8")  # an earlier run's checkpoint in the same folder
    with pytest.raises(CheckpointError, match="left by an earlier run") as e: find_checkpoint(tmp_path / "b")
    assert "\n" not in str(e.value)


def _earlier(tmp_path, train) -> Path:
    _tiny_run(tmp_path / "earlier", train, keep_checkpoints=True)
    return tmp_path / "earlier" / "checkpoint-8"


def test_resume_from_another_runs_checkpoint_is_one_line(tiny_data, tmp_path):
    from gpt_finetune.train import CheckpointError
    train, _ = tiny_data
    _tiny_run(tmp_path / "a", train, keep_checkpoints=True)
    with pytest.raises(KeyboardInterrupt): _tiny_run(tmp_path / "b", train, callbacks=[_Crash(1)])
    before = _snapshot(tmp_path / "b")
    with pytest.raises(CheckpointError, match="made by another run") as e:
        _tiny_run(tmp_path / "b", train, resume=str(tmp_path / "a" / "checkpoint-8"))
    assert "\n" not in str(e.value) and _snapshot(tmp_path / "b") == before


def test_bf16_weights_run_resumes_exactly(tiny_data, tmp_path):
    "bf16 weights with float32 master weights: the masters travel in the checkpoint, so a resumed run is bit-identical."
    train, _ = tiny_data
    bf16 = dict(precision="bf16", bf16_weights="on")
    full, stats = _tiny_run(tmp_path / "full", train, **bf16)
    assert stats["bf16_weights"]
    with pytest.raises(KeyboardInterrupt): _tiny_run(tmp_path / "cut", train, callbacks=[_Crash(5)], **bf16)
    resumed, stats = _tiny_run(tmp_path / "cut", train, resume=True, **bf16)
    assert stats["resumed_from"] == 4 and stats["steps"] == 8
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()): assert torch.equal(a, b), n
