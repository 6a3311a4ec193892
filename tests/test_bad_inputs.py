"""The bad-input corpus (tests/bad_inputs/): each malformed or hostile file gets its exact outcome through
`gpt-finetune prepare`: a one-line error naming the file and line, or the bad records dropped and reported
with the valid ones all kept. The big files (a 2 MB record, thousands of duplicates) are generated here."""
import json
from pathlib import Path

import pytest

from conftest import run_cli
from gpt_finetune.cli import main
from gpt_finetune.data import tiny_tokenizer

CORPUS = Path(__file__).parent / "bad_inputs"

ERRORS = {  # file: the one-line error after "gpt-finetune: error: <path>"
    "truncated.json": ":2: not valid JSON (Unterminated string starting at)",
    "trailing_comma.json": ":3: trailing comma before ']' is not valid JSON",
    "top_level_object.json": ':1: expected a JSON array of records, found one object; the records may be in its "data" field [wrong_top_level]',
    "top_level_string.json": ":1: expected a JSON array of records or JSON lines, found '\"' [wrong_top_level]",
    "empty.json": ": the file is empty; expected JSON, JSON lines, CSV or TSV records",
    "whitespace_only.jsonl": ": the file is empty; expected JSON, JSON lines, CSV or TSV records",
    "utf16.json": ":1: UTF-16 text; save the file as UTF-8 [not_utf8]",
    "latin1.json": ":2: not UTF-8 text (byte 14); save the file as UTF-8 [not_utf8]",
    "nul_in_array.json": ":3: a NUL byte in the file [nul_byte]",
    "csv_named.json": ":1: not JSON; this looks like a CSV/TSV table: name it .csv or .tsv [not_json]",
    "mixed_formats.jsonl": ": mixes formats (3 pairs, 1 prompt_completion, 1 chat): record 2 (line 3) is prompt_completion, "
                           "record 4 (line 5) is chat; most records are pairs [mixed_format]",
}

DROPPED = {  # file: (report rows other than flags, valid records kept)
    "broken_line.jsonl": ([("dropped", "not_json", "broken_line.jsonl:3 record 2")], 3),
    "null_fields.json": ([("dropped", "wrong_type", "null_fields.json:14 record 3")], 3),
    "number_fields.jsonl": ([("dropped", "wrong_type", "number_fields.jsonl:4 record 3")], 3),
    "object_fields.jsonl": ([("dropped", "wrong_type", "object_fields.jsonl:4 record 3")], 3),
    "missing_field.jsonl": ([("dropped", "missing_field", "missing_field.jsonl:2 record 1")], 3),
    "empty_text.jsonl": ([("dropped", "empty_text", "empty_text.jsonl:4 record 3")], 3),
    "wrong_item_types.json": ([("dropped", "wrong_type", f"wrong_item_types.json:{14 + i} record {3 + i}") for i in range(3)], 3),
    "unknown_role.jsonl": ([("dropped", "unknown_role", "unknown_role.jsonl:4 record 3")], 3),
    "no_assistant.jsonl": ([("dropped", "no_assistant", "no_assistant.jsonl:4 record 3")], 3),
    "nul_escape.jsonl": ([("dropped", "nul_byte", "nul_escape.jsonl:4 record 3")], 3),
    "control_tokens.jsonl": ([("dropped", "control_token", "control_tokens.jsonl:4 record 3")], 3),
    "csv_bad_rows.csv": ([("dropped", "wrong_type", "csv_bad_rows.csv:3 record 1"), ("dropped", "missing_field", "csv_bad_rows.csv:5 record 3")], 3),
    "bom.json": ([], 3),
    "crlf.tsv": ([], 3),
    "control_chars.jsonl": ([("changed", "control_chars", "control_chars.jsonl:4 record 3")], 4),
    "unicode.jsonl": ([("changed", "normalized", "unicode.jsonl:3 record 2")], 4),
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    "A folder with the tiny tokenizer: `prepare` loads only a tokenizer."
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save_pretrained(path)
    return path


def prepare(path, out, tok_dir, *more):
    return main(["prepare", "--data", str(path), "--output-dir", str(out), "--model", str(tok_dir), *map(str, more)])


def report(out):
    rows = [json.loads(l) for l in (out / "data_report.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows, json.loads((out / "data_report.json").read_text())


def test_the_corpus_is_complete():
    assert len(list(CORPUS.iterdir())) >= 20
    assert {p.name for p in CORPUS.iterdir()} == set(ERRORS) | set(DROPPED)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_file_is_one_line(name, tmp_path, tok_dir, capsys):
    path = CORPUS / name
    assert prepare(path, tmp_path / "out", tok_dir) == 2
    assert capsys.readouterr().err.splitlines() == [f"gpt-finetune: error: {path}{ERRORS[name]}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(DROPPED))
def test_bad_records_are_dropped_and_reported(name, tmp_path, tok_dir, capsys):
    expected, n_valid = DROPPED[name]
    invalid = sum(a == "dropped" for a, _, _ in expected)
    assert prepare(CORPUS / name, tmp_path, tok_dir) == (1 if invalid else 0)
    assert capsys.readouterr().err == ""
    rows, data = report(tmp_path)
    assert [(r["action"], r["reason"], r["source"]) for r in rows if r["action"] != "flagged"] == expected
    assert data["invalid"] == invalid
    assert sum(data["kept"].values()) == n_valid  # no valid record is lost


def test_strict_stops_on_the_first_problem(tok_dir, tmp_path, capsys):
    path = CORPUS / "wrong_item_types.json"
    assert prepare(path, tmp_path / "out", tok_dir, "--strict") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gpt-finetune: error: {path}:14: record 3: expected an object, found string [wrong_type]; 2 more (run `gpt-finetune prepare` for the list)"]


def test_unicode_survives_intact(tok_dir, tmp_path):
    prepare(CORPUS / "unicode.jsonl", tmp_path, tok_dir)
    rows, _ = report(tmp_path)
    assert rows[0]["record"]["output"] == "Un café, s'il vous plaît."  # composed by NFC
    kept = {json.loads(l)["output"] for l in (CORPUS / "unicode.jsonl").read_text(encoding="utf-8").splitlines()}
    assert "Hi 👋🏽" in kept and "القاهرة\u200f" in kept


def _pairs(n, start=0):
    return [{"input": f"Question {i}: what is {i} times {i * 7 % 13}?", "output": f"{i * (i * 7 % 13)} exactly, number {i}."}
            for i in range(start, start + n)]


def test_a_2mb_record_is_dropped_as_too_long(tok_dir, tmp_path, capsys):
    path = tmp_path / "huge.jsonl"
    rows = _pairs(5) + [{"input": "Tell me everything.", "output": "all work and no play " * 100_000}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert path.stat().st_size > 2_000_000
    assert prepare(path, tmp_path / "out", tok_dir) == 0
    rows, data = report(tmp_path / "out")
    assert [(r["action"], r["reason"], r["source"]) for r in rows if r["action"] == "dropped"] == [("dropped", "too_long", "huge.jsonl:6 record 5")]
    assert sum(data["kept"].values()) == 5
    assert prepare(path, tmp_path / "out2", tok_dir, "--too-long", "error") == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("gpt-finetune: error: huge.jsonl:6 record 5: ") and "longer than max_length 512" in err


def test_thousands_of_duplicates(tok_dir, tmp_path):
    path = tmp_path / "dups.json"
    path.write_text(json.dumps(_pairs(1) * 5000 + _pairs(10, start=1)))
    assert prepare(path, tmp_path / "out", tok_dir) == 0
    rows, data = report(tmp_path / "out")
    assert [r["reason"] for r in rows] == ["duplicate"] * 4999
    assert {r["duplicate_of"] for r in rows} == {"dups.json:1 record 0"}
    assert sum(data["kept"].values()) == 11


@pytest.mark.parametrize("name", ["truncated.json", "utf16.json"])
def test_real_command_prints_no_traceback(name, tmp_path, tok_dir):
    res = run_cli("prepare", "--data", CORPUS / name, "--output-dir", tmp_path, "--model", tok_dir)
    assert res.returncode == 2 and res.stderr.splitlines() == [f"gpt-finetune: error: {CORPUS / name}{ERRORS[name]}"]
