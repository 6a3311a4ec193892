"""Hostile cases at the run's output folder and in training: a user's files are never deleted, a folder that is not a
run folder is refused, a forged manifest deletes nothing, a killed run keeps its checkpoints until the model and the
report are written, a full disk or a read-only folder is one line with no temporary folder left, and a loss that turns
NaN stops the run before anything of it is saved. Each case is one line and exit status 2 from the command."""
import errno, json, os, shutil, signal, subprocess, sys
from pathlib import Path

import pytest
import torch

from gpt_finetune.cli import main

CLI = str(Path(sys.executable).parent / "gpt-finetune")
MARKER = "gpt-finetune-run.json"


@pytest.fixture(scope="module", autouse=True)
def one_thread_own_cache(tmp_path_factory):
    "Tiny models run fastest on one thread; the base model's cached answers stay in this module's folder."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("GPT_FINETUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)



def _args(data, model, out, *more):
    return ["run", "--data", data, "--model", model, "--output-dir", out, "--epochs", 1, "--max-new-tokens", 2,
            "--eval-every", 0, "--save-every", 1, "--precision", "fp32", "--no-progress", *more]


def _main(capsys, *args) -> tuple[int, str]:
    "The command in this process (a tiny run takes seconds; a new process costs more than that)."
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _ends_in_one_line(code: int, err: str, expected: str):
    "Exit status 2, no traceback, and the one error line says `expected`."
    errors = [l for l in err.splitlines() if l.startswith("gpt-finetune: error: ")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and expected in errors[0], (code, err[-2000:])


def _snapshot(folder: Path) -> dict:
    "Every entry below `folder` with its size and modification time: to show nothing was touched."
    return {str(p.relative_to(folder)): (p.is_dir(), p.lstat().st_size if not p.is_dir() else 0, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")}


def _users_folder(path: Path) -> Path:
    "A folder of someone's files, one of them named like a run's file."
    path.mkdir()
    (path / "holiday.png").write_bytes(b"\x89PNG my holiday")
    (path / "model").mkdir(); (path / "model" / "weights.bin").write_bytes(b"my own model")
    (path / ".model-backup").mkdir(); (path / ".model-backup" / "weights.bin").write_bytes(b"my backup")
    (path / "metrics.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def finished_run(llama_dir, data, tmp_path_factory):
    "A finished run folder (model, report, marker), copied by the tests that change it."
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([str(a) for a in _args(data, llama_dir, out)]) == 0
    return out


# ---- whose files: the marker and its manifest ----

@pytest.mark.parametrize("flag", ["--overwrite", "--no-overwrite"])
def test_overwrite_never_deletes_a_users_files(flag, llama_dir, data, tmp_path, capsys):
    "Today `--overwrite` deleted holiday.png, model/ and .model-backup/ because metrics.json was there."
    out = _users_folder(tmp_path / "mine")
    before = _snapshot(out)
    _ends_in_one_line(*_main(capsys, *_args(data, llama_dir, out, flag)), "not a gpt-finetune run folder")
    assert _snapshot(out) == before


@pytest.mark.parametrize("command", ["run", "prepare"])
def test_a_non_empty_folder_without_the_marker_is_refused(command, llama_dir, data, tmp_path, capsys):
    "A repository root or a home folder is not an output folder: refused before anything is written into it."
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True); (repo / "README.md").write_text("# my project")
    before = _snapshot(repo)
    args = _args(data, llama_dir, repo) if command == "run" else ["prepare", "--data", data, "--model", llama_dir,
                                                                    "--output-dir", repo]
    _ends_in_one_line(*_main(capsys, *args), f"{repo}: not empty and not a gpt-finetune run folder")
    assert _snapshot(repo) == before


def test_overwrite_deletes_only_what_the_manifest_lists(finished_run, llama_dir, data, tmp_path, capsys):
    "The user's files beside a run survive `--overwrite`; a linked folder loses the link, never its contents."
    out = tmp_path / "run"; shutil.copytree(finished_run, out, symlinks=True)
    old_id = json.loads((out / MARKER).read_text())["run_id"]
    (out / "holiday.png").write_bytes(b"\x89PNG mine")
    (out / ".model-backup").mkdir(); (out / ".model-backup" / "w.bin").write_bytes(b"mine")
    shared = tmp_path / "shared-models"; shutil.move(out / "model", shared)
    (out / "model").symlink_to(shared, target_is_directory=True)  # the run's model/, linked elsewhere by the user
    before = _snapshot(shared)
    code, err = _main(capsys, *_args(data, llama_dir, out, "--overwrite"))
    assert code == 0, err[-3000:]
    assert (out / "holiday.png").read_bytes() == b"\x89PNG mine" and (out / ".model-backup" / "w.bin").exists()
    assert _snapshot(shared) == before and not (out / "model").is_symlink()
    marker = json.loads((out / MARKER).read_text())
    assert marker["run_id"] != old_id and "holiday.png" not in marker["wrote"] and "model" in marker["wrote"]


@pytest.mark.parametrize("wrote", [["../victim"], ["/tmp"], ["model/../../victim"], "model", [".."], [MARKER]])
def test_a_forged_manifest_deletes_nothing(wrote, llama_dir, data, tmp_path, capsys):
    "A marker whose list names anything but an entry of its own folder is refused, and nothing anywhere is deleted."
    victim = tmp_path / "victim"; victim.mkdir(); (victim / "keep.txt").write_text("keep")
    out = tmp_path / "run"; out.mkdir()
    (out / MARKER).write_text(json.dumps({"run_id": "x", "wrote": wrote}))
    (out / "metrics.json").write_text("{}")
    before = _snapshot(tmp_path)
    _ends_in_one_line(*_main(capsys, *_args(data, llama_dir, out, "--overwrite")), "not a run marker")
    assert _snapshot(tmp_path) == before


# ---- a run killed after training keeps what it needs to resume ----

def _final_evaluation_killed(monkeypatch):
    "Ctrl-C during the final evaluation: the base model's evaluation is the first call, the final one the second."
    import gpt_finetune.evaluation as ev
    real, calls = ev.evaluate_model, []
    def evaluate(*a, **kw):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(ev, "evaluate_model", evaluate)


def _report_killed(monkeypatch):
    "Ctrl-C while the report is written, the model already saved."
    import gpt_finetune.compare as cmp
    def write_report(*a, **kw): raise KeyboardInterrupt
    monkeypatch.setattr(cmp, "write_report", write_report)


@pytest.mark.parametrize("kill", [_final_evaluation_killed, _report_killed], ids=["final-evaluation", "report"])
def test_checkpoints_stay_until_model_and_report_are_written(kill, llama_dir, data, tmp_path, capsys):
    "Today the checkpoints were deleted when training ended: a kill before the report left nothing to resume."
    from gpt_finetune.train import find_checkpoint
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        kill(mp)
        code, err = _main(capsys, *_args(data, llama_dir, out, "--no-reuse-baseline"))
    assert code == 130, err[-3000:]
    last = find_checkpoint(out / "checkpoints")  # the run's last step, complete
    assert not list(out.glob(".model-*")) and not (out / "report.md").exists()
    code, err = _main(capsys, *_args(data, llama_dir, out, "--resume"))
    assert code == 0, err[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["resumed_from"] == m["train"]["steps"] == int(last.name.split("-")[1])
    assert (out / "report.md").exists() and (out / "model" / "model.safetensors").exists()
    assert not (out / "checkpoints").exists() and m["disk"]["checkpoint_bytes_removed"] > 0  # removed at the very end


# ---- the disk refuses: full, too large, no permission, read-only ----

def _disk_full_in_safetensors(monkeypatch):
    "The model's weights half-written, then the disk is full, as safetensors reports it."
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(mu, "safe_save_file", save_file)


def test_disk_full_while_saving_the_model_is_one_line(llama_dir, data, tmp_path, capsys):
    "Today: a safetensors traceback and a partial .model-*.tmp/ folder left behind."
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _disk_full_in_safetensors(mp)
        code, err = _main(capsys, *_args(data, llama_dir, out, "--save-every", 0))
    _ends_in_one_line(code, err, f"{out / 'model'}: No space left on device; free some space")
    assert not list(out.glob(".model-*")) and not (out / "model").exists()


def _limited_run(limit: int, *args) -> subprocess.CompletedProcess:
    "The real command with files capped at `limit` bytes: the kernel refuses a longer write (EFBIG), as a full disk."
    resource = pytest.importorskip("resource")  # POSIX
    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=600, preexec_fn=cap,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("where,limit,save_every", [("model", 200_000, 0), ("checkpoint", 800_000, 1)])
def test_real_refused_write_is_one_line_and_leaves_no_temporary_folder(where, limit, save_every, llama_dir, data,
                                                                       tmp_path):
    "The tiny model's weights are ~550 kB and a checkpoint's optimizer state ~1.1 MB: each write is cut by the kernel."
    out = tmp_path / "run"
    res = _limited_run(limit, *_args(data, llama_dir, out, "--save-every", save_every))
    _ends_in_one_line(res.returncode, res.stderr, "File too large; free some space" if where == "model"
                      else "a write failed, the disk may be full")
    assert not list(out.glob(".model-*")) and not (out / "model").exists()
    assert not [c for c in (out / "checkpoints").glob("checkpoint-*") if not (c / "run_id").exists()]  # no half one


def test_permission_denied_is_one_line(llama_dir, data, tmp_path, capsys):
    "The output folder's parent refuses a new folder (tests run as root, where chmod refuses nothing: simulated)."
    out = tmp_path / "locked" / "run"
    real = Path.mkdir
    def mkdir(self, *a, **kw):
        if self == out: raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", mkdir)
        code, err = _main(capsys, *_args(data, llama_dir, out))
    _ends_in_one_line(code, err, f"{out}: Permission denied; make it writable or choose another --output-dir")


def test_read_only_folder_is_one_line(llama_dir, data, tmp_path, capsys):
    "Every write inside the folder fails as on a read-only file system: nothing is left in it."
    out = tmp_path / "ro"; out.mkdir()
    real = Path.write_text
    def write_text(self, *a, **kw):
        if out in self.parents: raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_text", write_text)
        code, err = _main(capsys, *_args(data, llama_dir, out))
    _ends_in_one_line(code, err, "Read-only file system; make it writable or choose another --output-dir")
    assert list(out.iterdir()) == []


ROOT = getattr(os, "geteuid", lambda: 0)() == 0  # (or not POSIX) chmod does not stop root's writes


@pytest.mark.skipif(ROOT, reason="root writes into a read-only folder: the case above simulates it")
def test_chmod_read_only_folder_is_one_line(llama_dir, data, tmp_path, capsys):
    out = tmp_path / "ro"; out.mkdir(); out.chmod(0o555)
    try: _ends_in_one_line(*_main(capsys, *_args(data, llama_dir, out)), "Permission denied")
    finally: out.chmod(0o755)
    assert list(out.iterdir()) == []


def test_output_folder_under_a_file_is_refused_before_loading(data, tmp_path, capsys):
    "`--output-dir notes.txt/run`: one line at once, before the (here missing) model is even looked for."
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    _ends_in_one_line(*_main(capsys, *_args(data, tmp_path / "no-model", out)), f"{tmp_path / 'notes.txt'} is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_unwritable_cache_costs_only_time(llama_dir, data, tmp_path, capsys, monkeypatch):
    "The base model's cached answers cannot be stored (the cache folder is under a file): the run still succeeds."
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "file" / "cache"))
    code, err = _main(capsys, *_args(data, llama_dir, tmp_path / "run"))
    assert code == 0 and (tmp_path / "run" / "model").is_dir(), err[-3000:]


# ---- a loss that turns NaN ----

def _loss_turns_nan_at(step: int, monkeypatch):
    "From training step `step` on the loss is NaN, as when a run diverges; evaluation is untouched."
    import gpt_finetune.train as tr
    real, seen = tr.answer_loss_sum, []
    def loss_sum(model, inputs, fused=None):
        loss, n, out = real(model, inputs, fused)
        if model.training: seen.append(1)
        nan = model.training and len(seen) >= step
        return (loss * float("nan") if nan else loss), n, out
    monkeypatch.setattr(tr, "answer_loss_sum", loss_sum)


def test_nan_loss_stops_the_run_and_saves_nothing_of_it(llama_dir, data, tmp_path, capsys):
    "Today: the NaN weights were trained on, saved as the model, and the run exited 0."
    from gpt_finetune.train import find_checkpoint
    from safetensors.torch import load_file
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _loss_turns_nan_at(3, mp)
        code, err = _main(capsys, *_args(data, llama_dir, out))
    _ends_in_one_line(code, err, "training diverged at step 3: the loss is nan")
    assert not (out / "model").exists() and not list(out.glob(".model-*")) and not (out / "metrics.json").exists()
    assert find_checkpoint(out / "checkpoints").name == "checkpoint-2"  # the latest kept: before the loss went NaN
    for c in (out / "checkpoints").glob("checkpoint-*"):
        assert all(torch.isfinite(t).all() for t in load_file(c / "model.safetensors").values()), c


def test_weights_that_overflow_are_never_checkpointed_or_returned(tmp_path):
    "The loss of the last step was finite but its update was not: no checkpoint of it, and an error, not a model."
    from transformers import TrainerCallback
    from gpt_finetune.data import default_data_path, tokenize_records
    from gpt_finetune.formats import load_records
    from gpt_finetune.model import tiny_model
    from gpt_finetune.options import TrainConfig
    from gpt_finetune.train import NonFiniteLoss, finetune
    class Overflow(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kw):
            if state.global_step == 3:  # the 4th (last) update
                with torch.no_grad(): model.get_input_embeddings().weight[5].fill_(float("inf"))
    model, tok = tiny_model("llama")
    ds = tokenize_records(load_records(default_data_path()).records[:16], tok)
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=1, batch_size=4, learning_rate=3e-3, warmup=0, save_every=1,
                      keep_checkpoints=True, save_limit=0, progress=False, precision="fp32")
    with pytest.raises(NonFiniteLoss, match="training diverged by step 4: the weights are not finite") as e:
        finetune(model, tok, ds, None, cfg, callbacks=[Overflow()])
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_a_run_that_cannot_fit_stops_up_front(llama_dir, data, tmp_path, monkeypatch, capsys):
    "Too little memory for even one example: one line with the estimate, exit 2, before any training or writing."
    import gpt_finetune.speed as speed
    monkeypatch.setattr(speed, "_free_bytes", lambda device: 10**8)  # 100 MB free
    out = tmp_path / "run"
    assert main([str(a) for a in _args(data, llama_dir, out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs ~" in err[0] and "GB" in err[0] and "Traceback" not in err[0], err
    assert not (out / "checkpoints").exists() and not (out / "model").exists()
