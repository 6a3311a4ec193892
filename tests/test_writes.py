"""What a run writes: never over an earlier run unless asked, a marker listing all it wrote, the model renamed into
place before the report, no checkpoints left behind unless kept, the disk space printed; bad input of any kind is one
line, exit 2. Hostile cases (a user's files, forged markers, full disks, read-only folders): tests/hostile/."""
import json

import pytest

from conftest import run_cli
from gpt_finetune.cli import main



def _run(llama_dir, data, out, *more):
    return run_cli("run", "--data", data, "--model", llama_dir, "--output-dir", out, "--epochs", 1,
                   "--max-new-tokens", 2, "--eval-every", 0, "--save-every", 1, "--no-progress", *more)


def test_run_folder_is_written_safely(llama_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    first = _run(llama_dir, data, out)
    assert first.returncode == 0, first.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert "checkpoints" not in names and not [n for n in names if n.startswith(".")], names  # nothing half-done left
    assert {"model", "config.yaml", "metrics.json", "report.md", "training_log.csv"} <= names
    model_time = (out / "model" / "model.safetensors").stat().st_mtime_ns
    for report in ("metrics.json", "report.md", "answers.jsonl"):  # the model is in place before what describes it
        assert model_time < (out / report).stat().st_mtime_ns, report
    wrote = json.loads((out / "gpt-finetune-run.json").read_text())["wrote"]  # the marker lists all the run wrote
    assert names - {"gpt-finetune-run.json"} <= set(wrote)
    m = json.loads((out / "metrics.json").read_text())
    assert m["disk"]["checkpoint_bytes_removed"] > 0 and m["disk"]["model_bytes"] > 0
    assert ("disk: " in first.stdout and "checkpoints removed" in first.stdout
            and "time: base evaluation" in first.stdout)

    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = _run(llama_dir, data, out)  # a second run into the same folder is refused, the first run untouched
    assert again.returncode == 2 and "holds an earlier run" in again.stderr and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    (out / "notes.txt").write_text("mine")
    kept = _run(llama_dir, data, out, "--overwrite", "--keep-checkpoints")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert list((out / "checkpoints").glob("checkpoint-*")) and (out / "notes.txt").read_text() == "mine"
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns > model_time


@pytest.mark.parametrize("content", [
    '{"input": "a", "output": "b"}',                                  # an object where an array or lines belong
    '[' * 100_000 + ']' * 100_000,                                    # nesting deeper than the JSON parser recurses
    '[{"input": "\\ud800", "output": "lone surrogate"}] ',           # a string no encoder accepts
    '[{"input": "a", "output": "b", "n": ' + "9" * 5000 + '}]',       # a number with thousands of digits
    b"\xff\xfe\x00broken",                                            # not UTF-8
], ids=["object", "deep", "surrogate", "long-number", "bytes"])
def test_bad_data_is_one_line(content, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    code = main(["prepare", "--data", path, "--model", tmp_path / "never-loaded", "--output-dir", tmp_path / "out",
                 "--strict"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert (code == 2 and len(lines) == 1 and lines[0].startswith("gpt-finetune: error: ")
            and "bad.json" in lines[0]), lines
