"""Bad input, end to end: every malformed or hostile data file (the corpus in tests/bad_inputs/ and the big ones
generated here) gets its exact outcome through `gpt-finetune prepare`/`run`: a one-line error naming the file and
line (exit status 2), or the bad records dropped and reported with every valid record kept. Never a traceback,
never a hang. The library-level cases check `formats.load_records`, `clean.clean_dataset` and
`data.tokenize_records`."""
import csv, json, os, subprocess, sys, time, tracemalloc
from pathlib import Path

import pytest

from conftest import run_cli
from gpt_finetune.cli import main
from gpt_finetune.clean import clean_dataset, normalize_text
from gpt_finetune.data import DataError, tiny_tokenizer, tokenize_records
from gpt_finetune.files import read_items
from gpt_finetune.formats import load_records

CORPUS = Path(__file__).parent / "bad_inputs"

ERRORS = {  # file: the one-line error after "gpt-finetune: error: <path>"
    "truncated.json": ":2: not valid JSON (Unterminated string starting at)",
    "trailing_comma.json": ":3: trailing comma before ']' is not valid JSON",
    "top_level_object.json": ':1: expected a JSON array of records, found one object; the records may be in its "data" '
                             'field [wrong_top_level]',
    "top_level_string.json": ":1: expected a JSON array of records or JSON lines, found '\"' [wrong_top_level]",
    "empty.json": ": the file is empty; expected JSON, JSON lines, CSV or TSV records",
    "whitespace_only.jsonl": ": the file is empty; expected JSON, JSON lines, CSV or TSV records",
    "utf16.json": ":1: UTF-16 text; save the file as UTF-8 [not_utf8]",
    "latin1.json": ":2: not UTF-8 text (byte 14); save the file as UTF-8 [not_utf8]",
    "nul_in_array.json": ":3: a NUL byte in the file [nul_byte]",
    "csv_named.json": ":1: not JSON; this looks like a CSV/TSV table: name it .csv or .tsv [not_json]",
    "csv_duplicate_header.csv": ":1: the header names the column 'output' twice [duplicate_key]",
    "mixed_formats.jsonl": ": mixes formats (3 pairs, 1 prompt_completion, 1 chat): record 2 (line 3) is "
                           "prompt_completion, record 4 (line 5) is chat; most records are pairs [mixed_format]",
}

DROPPED = {  # file: (report rows other than flags, valid records kept)
    "broken_line.jsonl": ([("dropped", "not_json", "broken_line.jsonl:3 record 2")], 3),
    "null_fields.json": ([("dropped", "wrong_type", "null_fields.json:14 record 3")], 3),
    "number_fields.jsonl": ([("dropped", "wrong_type", "number_fields.jsonl:4 record 3")], 3),
    "object_fields.jsonl": ([("dropped", "wrong_type", "object_fields.jsonl:4 record 3")], 3),
    "missing_field.jsonl": ([("dropped", "missing_field", "missing_field.jsonl:2 record 1")], 3),
    "empty_text.jsonl": ([("dropped", "empty_text", "empty_text.jsonl:4 record 3")], 3),
    "wrong_item_types.json": ([("dropped", "wrong_type", f"wrong_item_types.json:{14 + i} record {3 + i}")
                               for i in range(3)], 3),
    "unknown_role.jsonl": ([("dropped", "unknown_role", "unknown_role.jsonl:4 record 3")], 3),
    "no_assistant.jsonl": ([("dropped", "no_assistant", "no_assistant.jsonl:4 record 3")], 3),
    "nul_escape.jsonl": ([("dropped", "nul_byte", "nul_escape.jsonl:4 record 3")], 3),
    "control_tokens.jsonl": ([("dropped", "control_token", "control_tokens.jsonl:4 record 3")], 3),
    "csv_bad_rows.csv": ([("dropped", "wrong_type", "csv_bad_rows.csv:3 record 1"),
                          ("dropped", "missing_field", "csv_bad_rows.csv:5 record 3")], 3),
    "lone_surrogate.jsonl": ([("dropped", "not_utf8", "lone_surrogate.jsonl:4 record 3")], 3),
    "huge_number.jsonl": ([("dropped", "not_json", "huge_number.jsonl:4 record 3")], 3),
    "duplicate_keys.jsonl": ([("dropped", "duplicate_key", "duplicate_keys.jsonl:4 record 3")], 3),
    "reserved_field_names.jsonl": ([], 3),
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
    rows = [json.loads(l) for l in (out / "data_report.jsonl").read_text(encoding="utf-8").split("\n") if l]
    return rows, json.loads((out / "data_report.json").read_text())


def _pairs(n, start=0):
    return [{"input": f"Question {i}: what is {i} times {i * 7 % 13}?",
             "output": f"{i * (i * 7 % 13)} exactly, number {i}."} for i in range(start, start + n)]


def _jsonl(path, rows, *raw_lines):
    path.write_text("\n".join([json.dumps(r) for r in rows] + list(raw_lines)) + "\n", encoding="utf-8")
    return path


# ---- the corpus, through `prepare` ----

def test_the_corpus_is_complete():
    assert len(list(CORPUS.iterdir())) >= 25
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
        f"gpt-finetune: error: {path}:14: record 3: expected an object, found string [wrong_type]; "
        "2 more (run `gpt-finetune prepare` for the list)"]


def test_unicode_survives_intact(tok_dir, tmp_path):
    prepare(CORPUS / "unicode.jsonl", tmp_path, tok_dir)
    rows, _ = report(tmp_path)
    assert rows[0]["record"]["output"] == "Un café, s'il vous plaît."  # composed by NFC
    kept = {json.loads(l)["output"] for l in (CORPUS / "unicode.jsonl").read_text(encoding="utf-8").splitlines()}
    assert "Hi 👋🏽" in kept and "القاهرة\u200f" in kept


def test_real_command_prints_no_traceback(tmp_path, tok_dir):
    name = "truncated.json"
    res = run_cli("prepare", "--data", CORPUS / name, "--output-dir", tmp_path, "--model", tok_dir)
    assert res.returncode == 2 and res.stderr.splitlines() == [f"gpt-finetune: error: {CORPUS / name}{ERRORS[name]}"]


# ---- the main job stops before loading a model ----

RUN_CASES = {
    "missing": (None, "no such file"),
    "not_json.json": ("this is not json", ":1: expected a JSON array"),
    "missing_field.json": ('[{"input": "a", "output": "b"},\n {"input": "c"}]', "only 1 usable records"),
    "all_empty.json": ('[{"input": " ", "output": "b"}, {"input": "a", "output": ""}]', "only 0 usable records"),
}


@pytest.mark.parametrize("name", sorted(RUN_CASES))
def test_run_stops_with_one_line(name, tmp_path, capsys):
    content, expected = RUN_CASES[name]
    path = tmp_path / name
    if content is not None: path.write_text(content, encoding="utf-8")
    assert main(["run", "--data", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpt-finetune: error: {path}") and expected in lines[0], lines
    assert not (tmp_path / "out").exists()  # nothing written, and the model was never loaded


def test_bad_model_is_one_line(tmp_path):
    res = run_cli("generate", "--model", tmp_path / "nothing-here", "Hi?")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"gpt-finetune: error: {tmp_path / 'nothing-here'}: no such model folder or file"]


# ---- big and hostile files, generated ----

def test_a_2mb_record_is_dropped_as_too_long(tok_dir, tmp_path, capsys):
    path = _jsonl(tmp_path / "huge.jsonl",
                  _pairs(5) + [{"input": "Tell me everything.", "output": "all work and no play " * 100_000}])
    assert path.stat().st_size > 2_000_000
    assert prepare(path, tmp_path / "out", tok_dir) == 0
    rows, data = report(tmp_path / "out")
    assert [(r["action"], r["reason"], r["source"]) for r in rows if r["action"] == "dropped"] == [
        ("dropped", "too_long", "huge.jsonl:6 record 5")]
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


def test_deeply_nested_json_line_is_a_problem(tok_dir, tmp_path):
    path = _jsonl(tmp_path / "deep.jsonl", _pairs(4),
                  '{"input": "x", "output": "y", "z": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert prepare(path, tmp_path / "out", tok_dir) == 1
    rows, data = report(tmp_path / "out")
    assert [(r["reason"], r["source"]) for r in rows] == [("not_json", "deep.jsonl:5 record 4")]
    assert "nested too deeply" in rows[0]["message"] and sum(data["kept"].values()) == 4


def test_deeply_nested_json_array_is_one_line(tok_dir, tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(_pairs(3), indent=1)[:-1] + ",\n" + "[" * 100_000 + "]" * 100_000 + "]")
    assert prepare(path, tmp_path / "out", tok_dir) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gpt-finetune: error: {path}:15: JSON nested too deeply to read (over 100 levels)"]


def test_a_csv_field_over_128_kib_is_read(tok_dir, tmp_path):
    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("input", "output")] + [(r["input"], r["output"]) for r in _pairs(4)]
                                + [("Long?", "x" * 200_000)])
    assert prepare(path, tmp_path / "out", tok_dir) == 0
    rows, data = report(tmp_path / "out")
    # read, then judged in tokens
    assert [(r["reason"], r["source"]) for r in rows] == [("too_long", "long.csv:6 record 4")]


def test_rename_onto_an_existing_field_is_an_error(tok_dir, tmp_path, capsys):
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": "a?", "input": "b?", "output": "c"}])
    assert prepare(path, tmp_path / "out", tok_dir, "--fields", "question=input") == 2
    assert capsys.readouterr().err.splitlines() == [
        f'gpt-finetune: error: {path}:1: record 0: renaming the field "question" to "input" would overwrite '
        'the record\'s own "input"']


def test_lone_surrogates_never_crash_cleaning():
    records = [{"messages": [{"role": "user", "content": f"q{i} \ud800"}, {"role": "assistant", "content": "a \udfff"}]}
               for i in range(3)]
    kept, rows = clean_dataset(records)  # near-duplicate detection encodes the text
    assert len(kept) + sum(r["action"] == "dropped" for r in rows) == 3


def test_reserved_field_names_are_kept_in_extra(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"input": "a?", "output": "b", "source": "web", "format": "qa", "id": 7}])
    rec = load_records(path).records[0]
    assert (rec["source"], rec["format"], rec["id"], rec["extra"]) == (
        "x.jsonl:1 record 0", "pairs", 7, {"source": "web", "format": "qa"})


def test_weight_zero_turns_are_not_trained(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there.", "weight": 0},
            {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris.", "weight": 1}]
    rec = load_records(_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs}])).records[0]
    tok = tiny_tokenizer()
    row = tokenize_records([rec], tok)[0]
    assert tok.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]) == "Paris.<|im_end|>"
    assert "Hello there." in tok.decode(row["input_ids"])  # still context


# ---- linear time, streams ----

def test_array_line_numbers_cost_linear_time(tmp_path):
    rows = _pairs(20_000)
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, rows)))
    took = {}
    for name in ("a.json", "a.jsonl"):
        t0 = time.process_time()  # CPU seconds: other work on the machine does not count against either file
        assert len(load_records(tmp_path / name).records) == 20_000
        took[name] = time.process_time() - t0
    assert took["a.json"] < 3 * took["a.jsonl"] + 1.0, took  # quadratic line numbering would take minutes


def test_long_runs_of_spaces_clean_in_linear_time():
    t0 = time.perf_counter()
    assert normalize_text("a" + " " * 100_000 + "b")[0] == "a" + " " * 100_000 + "b"
    assert normalize_text("a" + " \t" * 50_000 + "\nb")[0] == "a\nb"
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_lines_and_tables_are_read_as_streams(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    rows = _pairs(30_000)
    path.write_text("\n".join(map(json.dumps, rows)) + "\n" if suffix == ".jsonl" else
                    "input,output\n" + "".join(f"\"{r['input']}\",\"{r['output']}\"\n" for r in rows))
    tracemalloc.start()
    n = sum(1 for _ in read_items(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 30_000 and peak < path.stat().st_size / 4, (peak, path.stat().st_size)


def test_a_stream_reports_a_bad_byte_at_its_line(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    items = read_items(path)
    assert next(items)[0] == {"input": "a", "output": "b"}  # the first record arrives before the bad byte is read
    with pytest.raises(DataError, match=r"late.jsonl:2: not UTF-8 text \(byte 44\)"): next(items)


# ---- Hub ids ----

def test_a_hub_id_offline_fails_fast_with_one_line(tmp_path, monkeypatch, capsys, tok_dir):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # unreachable here and everywhere
    t0 = time.perf_counter()
    assert prepare("nobody-here/no-such-dataset:train", tmp_path / "out", tok_dir) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.splitlines()
    assert err == ["gpt-finetune: error: nobody-here/no-such-dataset:train: no such file, and the Hugging Face Hub "
                   "cannot be reached to load it as a dataset (offline? a dataset already in the cache loads with "
                   "HF_HUB_OFFLINE=1)"]


def test_a_hub_id_with_hf_hub_offline_fails_with_one_line():
    code = ("from gpt_finetune.formats import load_records\nfrom gpt_finetune.data import DataError\n"
            "try: load_records('nobody-here/no-such-dataset')\nexcept DataError as e: print(e)")
    t0 = time.perf_counter()  # the libraries read HF_HUB_OFFLINE when imported: a fresh process
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert time.perf_counter() - t0 < 30  # imports included; no ~25 s of retries
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "nobody-here/no-such-dataset: cannot load it as a Hugging Face dataset ("), res


def test_a_missing_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match="no such file$"): load_records("data/train.jsonl")
