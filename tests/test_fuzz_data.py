"""Property-based fuzzing of the data path: generated JSON values, record shapes and raw bytes are thrown at
`formats.load_records` (then `clean.clean_dataset` and `data.tokenize_records`) and at `gpt-finetune prepare`.
Whatever comes in, the outcome is a one-line `DataError` naming the file, or a report in which every record read
is kept or reported, and every valid record survives validation. Bounded: a fixed number of examples, no deadline."""
import io, json, tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from gpt_finetune.cli import main
from gpt_finetune.clean import clean_dataset
from gpt_finetune.data import DataError, tiny_tokenizer, tokenize_records
from gpt_finetune.files import PROBLEM_CLASSES
from gpt_finetune.formats import load_records

TOK = tiny_tokenizer()
def fuzz(n: int) -> settings:
    "`n` examples, no deadline, the same examples on every run."
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    database=None)

# ---- what is generated ----
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["\ud800", "a\udfff b", "<|im_end|>", "\x00", " ", "9" * 5000]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=12)
roles = st.sampled_from(["system", "user", "assistant", "developer", "human", "gpt", "robot", ""])
message = st.fixed_dictionaries({}, optional={"role": roles | values, "content": st.text(max_size=30) | values,
                                              "from": roles, "value": st.text(max_size=20) | values,
                                              "weight": st.sampled_from([0, 1, 2, None, True, "0"])})
FIELDS = ["input", "output", "messages", "conversations", "instruction", "prompt", "completion", "text", "source",
          "format", "extra", "split", "accept", "weight", "id"]
shapes = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6),
                         st.text(max_size=30) | values | st.lists(message, max_size=4), max_size=6)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
               max_size=40).filter(lambda s: s.strip() and "<|" not in s)
clean_values = st.recursive(st.none() | st.booleans() | st.integers() | text, lambda c: st.lists(c, max_size=3),
                            max_leaves=5)
MARKERS = ("messages", "conversations", "instruction", "prompt", "input", "output", "text")
valid_pair = st.builds(lambda q, a, extra: {**extra, "input": q, "output": a}, text, text,
                       st.dictionaries(st.sampled_from(["source", "format", "extra", "split", "id", "accept"])
                                       | st.text(max_size=8).filter(lambda k: k not in MARKERS),
                                       clean_values, max_size=3))
rows = st.lists(st.one_of(valid_pair.map(lambda r: ("valid", r)), shapes.map(lambda r: ("junk", r)),
                          values.map(lambda r: ("junk", r))), max_size=10)
junk = st.one_of(shapes, values).map(lambda r: ("junk", r))
# enough to train on
mostly_valid = st.tuples(st.lists(valid_pair.map(lambda r: ("valid", r)), min_size=3, max_size=6),
                         st.lists(junk, max_size=3)).flatmap(lambda t: st.permutations(t[0] + t[1]))


def write(path: Path, items: list, container: str) -> list[int]:
    "Write the items as JSON lines or a JSON array, one per line; returns each item's line."
    lines = [json.dumps(x) for _, x in items]
    if container == "jsonl": path.write_text("\n".join(lines) + "\n")
    else: path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return [k + (1 if container == "jsonl" else 2) for k in range(len(items))]


def one_line(e: DataError, path: Path):
    msg = str(e)
    event(f"DataError [{msg.rsplit('[', 1)[-1].rstrip(']')}]" if msg.endswith("]") else "DataError")
    assert "\n" not in msg and msg.startswith(str(path)), msg


def check_report(path: Path, items: list, lines: list[int]):
    "Load, clean and tokenize; every record read is kept or reported and every valid one is kept by validation."
    try: loaded = load_records(path)
    except DataError as e: return one_line(e, path)
    assert loaded.n_read == len(items) and len(loaded.records) + loaded.n_problems == loaded.n_read
    event(f"report: {'some' if loaded.records else 'no'} records kept, "
          f"{'some' if loaded.n_problems else 'no'} problems")
    kept_sources = {r["source"] for r in loaded.records}
    for k, ((kind, _), line) in enumerate(zip(items, lines)):
        if kind == "valid": assert f"{path.name}:{line} record {k}" in kept_sources
    kept, report = clean_dataset(loaded.records)
    assert len(kept) + sum(r["action"] == "dropped" for r in report) == len(loaded.records)
    try: ds = tokenize_records(kept, TOK)
    except DataError as e: return one_line(e, path)
    assert len(ds) == len(kept)


@fuzz(150)
@given(items=rows, container=st.sampled_from(["jsonl", "json"]))
def test_records_of_any_shape_load_cleanly(items, container):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data.{container}"
        check_report(path, items, write(path, items, container))


@fuzz(150)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".tsv", ".txt"]),
       prefix=st.sampled_from([b"", b"[", b"{", b"\xef\xbb\xbf", b"input,output\n",
                               b'[{"input": "a", "output": "b"},\n', b'{"input": "a", "output": "b"}\n']))
def test_any_bytes_load_cleanly(data, suffix, prefix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(prefix + data)
        try: loaded = load_records(path)
        except DataError as e: return one_line(e, path)
        assert len(loaded.records) + loaded.n_problems == loaded.n_read
        event(f"report: {loaded.n_read} read")
        clean_dataset(loaded.records)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    TOK.save_pretrained(path)
    return path


def test_prepare_command_reports_or_stops_in_one_line(tok_dir):
    @fuzz(30)
    @given(items=rows | mostly_valid, container=st.sampled_from(["jsonl", "json"]))
    def prepare(items, container):
        with tempfile.TemporaryDirectory() as d:
            path, out, err = Path(d) / f"data.{container}", Path(d) / "out", io.StringIO()
            lines = write(path, items, container)
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                rc = main(["prepare", "--data", str(path), "--output-dir", str(out), "--model", str(tok_dir)])
            event(f"exit status {rc}")
            if rc == 2:  # one line, from the loader itself rather than the command's catch-all for unexpected errors
                assert len(err.getvalue().splitlines()) == 1 and err.getvalue().startswith(f"gpt-finetune: error: ")
                assert "cannot read (" not in err.getvalue(), err.getvalue()
                return
            assert rc in (0, 1) and err.getvalue() == ""
            report = json.loads((out / "data_report.json").read_text())
            assert report["records"] == sum(report["kept"].values()) + sum(report["dropped"].values())
            rows_ = [json.loads(l) for l in (out / "data_report.jsonl").read_text(encoding="utf-8").split("\n") if l]
            invalid = {r["source"] for r in rows_ if r["reason"] in PROBLEM_CLASSES}
            assert not invalid & {f"{path.name}:{line} record {k}"
                                  for k, ((kind, _), line) in enumerate(zip(items, lines)) if kind == "valid"}
    prepare()
