"""Hostile data files: a line or record over the readers' documented limit (`files.MAX_RECORD_BYTES`, 16 MiB) is
one line naming the file and the line where it starts, in every container (JSON lines, JSON array, one JSON object,
CSV, TSV, a folder of files), read in bounded memory: a file that is one huge line is refused after about the limit,
never loaded whole. Small limits keep most files small; one test uses the real limit on 50 MB files."""
import json, subprocess, sys
from pathlib import Path

import pytest

from gpt_finetune import files
from gpt_finetune.data import DataError
from gpt_finetune.files import read_items
from gpt_finetune.formats import load_records

CLI = str(Path(sys.executable).parent / "gpt-finetune")


@pytest.fixture
def small_limit(monkeypatch):
    "A 1 KiB limit, so that over-long records take kilobytes, not megabytes."
    monkeypatch.setattr(files, "MAX_RECORD_BYTES", 1024)


def _pair(output: str) -> dict: return {"input": "q", "output": output}


CASES = {  # name: (content, the start of the one line)
    "long.jsonl": ("\n".join(json.dumps(_pair(o)) for o in ("ok", "x" * 5000, "ok")), "long.jsonl:2: a line longer"),
    "long.json": ("[\n" + ",\n".join(json.dumps(_pair(o)) for o in ("ok", "ok", "x" * 5000)) + "\n]",
                  "long.json:4: a record longer"),
    "one_line.json": ("[" + ", ".join(json.dumps(_pair(o)) for o in ("ok", "x" * 5000)) + "]",
                      "one_line.json:1: a record longer"),
    "one_object.json": (json.dumps({"data": [_pair("x" * 5000)]}), "one_object.json:1: a record longer"),
    "long.csv": ('input,output\nq,ok\nq,"' + "x\n" * 2000 + '"\n', "long.csv:3: a record longer"),
    "long.tsv": ("input\toutput\nq\tok\nq\t" + "x" * 5000 + "\n", "long.tsv:3: a line longer"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_record_over_the_limit_is_one_line_naming_file_and_line(tmp_path, small_limit, name):
    content, says = CASES[name]
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e: list(read_items(tmp_path / name))
    assert str(e.value).startswith(f"{tmp_path}/{says} than 1,024 bytes") and "\n" not in str(e.value), e.value


def test_records_under_the_limit_are_read(tmp_path, small_limit):
    (tmp_path / "fine.json").write_text(json.dumps([_pair("x" * 900)] * 50))  # each record under, the file over
    assert len(list(read_items(tmp_path / "fine.json"))) == 50


def test_a_folder_of_files_is_checked_before_datasets_reads_it(tmp_path, small_limit):
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "train.jsonl").write_text(json.dumps(_pair("x" * 5000)) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: a line longer than 1,024 bytes"):
        load_records(tmp_path / "layout")


# The real limit on files of 50 MB: each is refused (or read) with a traced peak far below the file's size.
PEAK = """
import json, sys, tracemalloc
from gpt_finetune.data import DataError
from gpt_finetune.files import read_items
out = {}
for path in sys.argv[1:]:
    tracemalloc.start()
    try: n = sum(1 for _ in read_items(path)); said = f"{n} records"
    except DataError as e: said = str(e)
    except MemoryError: said = "MemoryError"
    out[path] = (said, tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
print(json.dumps(out))
"""
SIZE = 50 * 2**20


def test_a_50mb_line_is_refused_in_bounded_memory(tmp_path):
    files_ = {"line.jsonl": '{"input": "q", "output": "' + "x" * SIZE + '"}\n',
              "line.csv": "input,output\nq," + "x" * SIZE + "\n",
              "line.tsv": "input\toutput\nq\t" + "x" * SIZE + "\n",
              "array.json": '[{"input": "q", "output": "' + "x" * SIZE + '"}]',
              "object.json": '{"input": "q", "output": "' + "x" * SIZE + '"}',
              "blank.json": " " * SIZE + '[{"input": "q", "output": "a"}]'}  # a long run of blank space is no record
    for name, text in files_.items(): (tmp_path / name).write_text(text)
    res = subprocess.run([sys.executable, "-c", PEAK, *(str(tmp_path / n) for n in files_)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for path, (said, peak) in json.loads(res.stdout).items():
        name = Path(path).name
        expected = "1 records" if name == "blank.json" else f"{path}:{2 if name.endswith('sv') else 1}: a "
        assert said.startswith(expected), (name, said)
        assert peak < 5 * files.MAX_RECORD_BYTES, (name, f"{peak / 2**20:.0f} MB")  # the file is 50 MB


def test_the_command_refuses_a_huge_line_with_one_line(tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(_pair("ok")) + "\n" + json.dumps(_pair("x" * (20 * 2**20))) + "\n")
    res = subprocess.run([CLI, "prepare", "--data", path, "--output-dir", tmp_path / "out"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.splitlines() == [
        f"gpt-finetune: error: {path}:2: a line longer than 16,777,216 bytes; records are limited to that size "
        "(split the record, or check that the file is what it should be)"], res.stderr[-3000:]
