"""Bad data files and models stop the main job with one line naming the file (and line), never a traceback."""
import pytest

from conftest import run_cli
from gpt_finetune.cli import main

CASES = {
    "missing": (None, "no such file"),
    "empty.json": ("", "the file is empty"),
    "not_json.json": ("this is not json", ":1: expected a JSON array"),
    "object.json": ('{"input": "a", "output": "b"}', ":1: expected a JSON array of records"),
    "truncated.json": ('[{"input": "a", "output": "b"},\n {"input": "c", "outp', ":2: not valid JSON"),
    "trailing_comma.json": ('[{"input": "a", "output": "b"},\n]', ":2: trailing comma"),
    "missing_field.json": ('[{"input": "a", "output": "b"},\n {"input": "c"}]', ':2: record 1: missing field "output"'),
    "number.json": ('[\n{"input": "a", "output": 3}]', ':2: record 0: field "output" must be a string, found number'),
    "null.json": ('[\n{"input": null, "output": "b"}]', ':2: record 0: field "input" must be a string, found null'),
    "list_of_strings.json": ('["a", "b"]', ":1: record 0: expected an object"),
    "all_empty.json": ('[{"input": " ", "output": "b"}, {"input": "a", "output": ""}]', "only 0 usable records"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_data_is_one_line(name, tmp_path, capsys):
    content, expected = CASES[name]
    path = tmp_path / name
    if content is not None: path.write_text(content, encoding="utf-8")
    assert main(["run", "--data", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gpt-finetune: error: {path}")
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written, and the model was never loaded


@pytest.mark.parametrize("name", ["trailing_comma.json", "number.json"])
def test_real_command_prints_no_traceback(name, tmp_path):
    path = tmp_path / name
    path.write_text(CASES[name][0], encoding="utf-8")
    res = run_cli("run", "--data", path, "--output-dir", tmp_path / "out")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpt-finetune: error: {path}:"), res.stderr
    assert CASES[name][1] in lines[0]


def test_latin1_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"input": "café", "output": "oui"}]'.encode("latin-1"))
    assert main(["run", "--data", str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"gpt-finetune: error: {path}:1: not UTF-8 text (byte 15); save the file as UTF-8 [not_utf8]"


def test_bad_model_is_one_line(tmp_path):
    res = run_cli("generate", "--model", tmp_path / "nothing-here", "Hi?")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"gpt-finetune: error: {tmp_path / 'nothing-here'}: no such model folder or file"]
