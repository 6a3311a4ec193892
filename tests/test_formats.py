"""Every supported data format loads through the CLI, is detected and reported, and trains through the main job."""
import csv, json

import pytest
from datasets import Dataset, DatasetDict

from gpt_finetune.cli import main
from gpt_finetune.data import tiny_tokenizer, tokenize_records
from gpt_finetune.formats import load_records

QA = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "William Shakespeare."),
      ("How many legs does a spider have?", "Eight."), ("What colour is the sky on a clear day?", "Blue."),
      ("Which planet is closest to the sun?", "Mercury."), ("What do bees make?", "Honey."),
      ("How many days are in a leap year?", "366."), ("What is frozen water called?", "Ice."),
      ("Who painted the Mona Lisa?", "Leonardo da Vinci."), ("What gas do plants breathe in?", "Carbon dioxide."),
      ("What is the largest ocean?", "The Pacific."), ("How many strings does a violin have?", "Four.")]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _table(path, header, rows, delimiter):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header); w.writerows(rows)
    return path


def _chat(q, a, weight=1):
    return {"messages": [{"role": "system", "content": "Answer kindly."}, {"role": "user", "content": "Hello"},
                         {"role": "assistant", "content": "Hi! Ask me anything.", "weight": weight},
                         {"role": "user", "content": q}, {"role": "assistant", "content": a}]}


WRITERS = {  # name: (writer(tmp_path) -> path, expected format, extra CLI options)
    "json_array": (lambda d: (d / "a.json").write_text(json.dumps([{"input": q, "output": a} for q, a in QA]))
                   and d / "a.json", "pairs", []),
    "jsonl": (lambda d: _jsonl(d / "a.jsonl", [{"input": q, "output": a} for q, a in QA]), "pairs", []),
    "csv": (lambda d: _table(d / "a.csv", ["input", "output"], QA, ","), "pairs", []),
    "tsv_mapped": (lambda d: _table(d / "a.tsv", ["question", "answer"], QA, "\t"), "pairs",
                   ["--fields", "question=input,answer=output"]),
    "alpaca": (lambda d: _jsonl(d / "a.jsonl", [{"instruction": "Add the numbers.", "input": q, "output": a}
                                                for q, a in QA]), "alpaca", []),
    "chat": (lambda d: _jsonl(d / "a.jsonl", [_chat(q, a) for q, a in QA]), "chat", []),
    "prompt_completion": (lambda d: _jsonl(d / "a.jsonl", [{"prompt": q, "completion": a} for q, a in QA]),
                          "prompt_completion", []),
    "trl_conversational": (lambda d: _jsonl(d / "a.jsonl", [{"prompt": [{"role": "user", "content": q}],
                                                            "completion": [{"role": "assistant", "content": a}]}
                                                           for q, a in QA]),
                           "prompt_completion", []),
    "sharegpt": (lambda d: _jsonl(d / "a.jsonl", [{"conversations": [{"from": "system", "value": "Answer kindly."},
                                                                    {"from": "human", "value": q},
                                                                    {"from": "gpt", "value": a}]}
                                                  for q, a in QA]), "sharegpt", []),
    "openai_weights": (lambda d: _jsonl(d / "a.jsonl", [_chat(q, a, weight=0) for q, a in QA]), "chat", []),
    "trl_text": (lambda d: _jsonl(d / "a.jsonl", [{"text": f"{q} {a}"} for q, a in QA]), "text", []),
    "saved_dataset": (lambda d: Dataset.from_list([{"input": q, "output": a} for q, a in QA]).save_to_disk(d / "ds")
                      or d / "ds", "pairs", []),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_format_is_detected_and_prepared(name, tmp_path, llama_dir, capsys):
    write, fmt, more = WRITERS[name]
    path = write(tmp_path)
    assert main(["prepare", "--data", str(path), "--output-dir", str(tmp_path / "out"), "--model", str(llama_dir),
                 *more]) == 0
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["formats"] == {path.name: fmt}
    assert sum(report["kept"].values()) == len(QA)
    assert f"{path.name}: {fmt}" in capsys.readouterr().out


def test_dataset_dict_keeps_its_splits(tmp_path, llama_dir):
    rows = [{"input": q, "output": a} for q, a in QA]
    DatasetDict(train=Dataset.from_list(rows[:8]), validation=Dataset.from_list(rows[8:10]),
                test=Dataset.from_list(rows[10:])).save_to_disk(tmp_path / "dd")
    assert main(["prepare", "--data", str(tmp_path / "dd"), "--output-dir", str(tmp_path / "out"),
                 "--model", str(llama_dir)]) == 0
    assert json.loads((tmp_path / "out" / "data_report.json").read_text())["kept"] == {
        "train": 8, "validation": 2, "test": 2}


def test_separate_split_files_and_leakage(tmp_path, llama_dir):
    train = _jsonl(tmp_path / "train.jsonl", [{"input": q, "output": a} for q, a in QA[:9]])
    test = _jsonl(tmp_path / "test.jsonl",
                  [{"input": QA[0][0].lower(), "output": QA[0][1]}] + [{"input": q, "output": a} for q, a in QA[9:]])
    assert main(["prepare", "--data", str(train), "--test-data", str(test), "--valid-frac", "0",
                 "--output-dir", str(tmp_path / "out"), "--model", str(llama_dir)]) == 0
    rows = [json.loads(l) for l in (tmp_path / "out" / "data_report.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["split"], r["source"], r["duplicate_of"]) for r in rows if r["reason"] == "leakage"] == [
        ("leakage", "test", "test.jsonl:1 record 0", "train.jsonl:1 record 0")]
    assert json.loads((tmp_path / "out" / "data_report.json").read_text())["kept"] == {
        "train": 9, "validation": 0, "test": 3}


def test_multi_turn_chat_trains_through_the_main_job(tmp_path, llama_dir):
    path = _jsonl(tmp_path / "chat.jsonl", [_chat(q, a) for q, a in QA])
    assert main(["run", "--data", str(path), "--model", str(llama_dir), "--output-dir", str(tmp_path / "out"),
                 "--epochs", "2", "--learning-rate", "3e-3", "--max-new-tokens", "4", "--eval-every", "2"]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["data"]["formats"] == {"chat.jsonl": "chat"} and m["train"]["train_tokens"] > 0
    assert m["finetuned"]["eval_loss"] < m["base"]["eval_loss"]


TRAINED = {  # writer: what the tiny chat tokenizer trains on in the first record
    "sharegpt": "Paris.<|im_end|>",
    "openai_weights": "Paris.<|im_end|>",  # the weight-0 greeting is context only
    "chat": "Hi! Ask me anything.<|im_end|>Paris.<|im_end|>",
    "trl_conversational": "Paris.<|im_end|>",
    "trl_text": "What is the capital of France? Paris.<|im_end|>",  # a plain text is trained on whole
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_what_each_format_trains_on(name, tmp_path):
    tok = tiny_tokenizer()
    rec = load_records(WRITERS[name][0](tmp_path)).records[0]
    row = tokenize_records([rec], tok)[0]
    assert tok.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]) == TRAINED[name]
