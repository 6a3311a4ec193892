"""`gpt-finetune evaluate` end to end through the real command, on tiny random models, and its bad inputs."""
import json

import pytest

from conftest import run_cli
from gpt_finetune.cli import main
from gpt_finetune.compare import ROUNDING
from gpt_finetune.model import tiny_model

QUIZ = [{"input": "What is 2 plus 2?", "output": "4", "accept": ["four", "It is 4."]},
        {"input": "What is the capital of France?", "output": "Paris", "accept": ["Paris, France"]},
        {"input": "Who wrote Hamlet?", "output": "William Shakespeare"},
        {"input": "Say nothing.", "output": "..."}]  # no words to compare with: reported as unscored


def _write(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_evaluate_against_baseline(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    res = run_cli("evaluate", "--model", tiny_dir, "--data", _write(tmp_path / "quiz.json", QUIZ),
                  "--baseline", tiny_dir, "--output-dir", out, "--max-new-tokens", 4, "--n-resamples", 200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "95 % interval" in res.stdout and "\neval_loss " in res.stdout and "report.md" in res.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"base", "finetuned", "data", "comparison", "timings", "probe"}
    assert m["data"] == {"source": str(tmp_path / "quiz.json"), "format": "pairs", "records": 4, "dropped": {},
                         "with_accept": 2}
    for side in ("base", "finetuned"):
        for key in ("eval_loss", "perplexity", "exact_match", "token_f1", "rougeL", "bleu", "chrf", "stop_rate",
                    "mean_answer_tokens"):
            assert key in m[side], (side, key)
        assert [(u["metric"], u["record"]) for u in m[side]["unscored"]] == [
            (k, "quiz.json:1 record 3") for k in ("exact_match", "token_f1", "rougeL")]
    # the same model on both sides: the same answers, so every text metric's difference is zero, and so is its
    # interval; the loss of two loads of the same weights may differ by float32 rounding, never by more
    for key, row in m["comparison"].items():
        assert row["verdict"] == "no clear difference", key
        if key in ("eval_loss", "perplexity"):
            margin = ROUNDING * max(abs(row["base"]), abs(row["finetuned"]))
            assert abs(row["diff"]) <= margin and all(abs(x) <= margin for x in row["diff_ci"]), (key, row)
        else: assert row["diff"] == 0 and row["diff_ci"] == [0, 0], key
    answers = [json.loads(l) for l in (out / "answers.jsonl").read_text().splitlines()]
    assert (answers[0]["references"] == ["4", "four", "It is 4."]
            and answers[3]["finetuned_scores"]["exact_match"] is None)
    report = (out / "report.md").read_text()
    assert "## Base vs fine-tuned" in report and "## Records a metric could not score" in report
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_accept_list_counts_as_correct(tmp_path):
    "The model's own answer, given only as an `accept` alternative, counts as an exact match."
    from gpt_finetune.generation import generate_answers
    from gpt_finetune.metrics import normalize_answer
    from gpt_finetune.model import load_model
    # the tiny random GPT-2 answers in words ("only only"); the tiny llama's tokens decode to nothing
    tiny_dir = tmp_path / "tiny-gpt2"
    model, tok = tiny_model("gpt2")
    model.save_pretrained(tiny_dir); tok.save_pretrained(tiny_dir)
    questions = ["What is 2 plus 2?", "What is 3 plus 3?", "What is 4 plus 4?"]
    said = [a["text"] for a in generate_answers(*load_model(tiny_dir), questions, max_new_tokens=6)]
    k = next(i for i, text in enumerate(said) if normalize_answer(text))  # an answer with words in it
    data = _write(tmp_path / "accept.json",
                  [{"input": q, "output": "nothing like this", **({"accept": [said[k]]} if i == k else {})}
                   for i, q in enumerate(questions)])
    res = run_cli("evaluate", "--model", tiny_dir, "--data", data, "--output-dir", tmp_path / "out",
                  "--max-new-tokens", 6)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(m) == {"finetuned", "data", "timings", "probe"}
    answers = [json.loads(l) for l in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [a["finetuned"] for a in answers] == said
    # right by its accept list only
    assert [a["finetuned_scores"]["exact_match"] for a in answers] == [float(i == k) for i in range(3)]
    assert m["finetuned"]["exact_match"] == 1 / 3
    assert "## Metrics" in (tmp_path / "out" / "report.md").read_text()


BAD_FILES = {
    "no_reference.json": ('[{"input": "a", "output": "b"},\n {"input": "c"}]', ':2: record 1: missing field "output"'),
    "empty.json": ("", "the file is empty"),
    "no_records.json": ("[]", "no records to evaluate"),
    "bad_accept.json": ('[{"input": "a", "output": "b", "accept": "c"}]', '"accept" must be a list of strings'),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_one_line(name, tmp_path, capsys):
    "In this process: these errors come before any model is loaded, and a new process would cost more than they do."
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert main(["evaluate", "--model", tmp_path / "never-loaded", "--data", path,
                 "--output-dir", tmp_path / "out"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-finetune: error: ") and path.name in lines[0], lines
    assert expected in lines[0]
    assert not (tmp_path / "out").exists()  # the file is checked before any model is loaded or anything written


def _not_a_causal_lm(path):
    from transformers import DistilBertConfig, DistilBertModel
    from gpt_finetune.data import tiny_tokenizer
    DistilBertModel(DistilBertConfig(vocab_size=1000, dim=32, hidden_dim=64,
                                     n_layers=1, n_heads=2)).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["encoder", "no_model"])
def test_not_a_causal_lm_is_one_line(kind, tmp_path, capsys):
    model = _not_a_causal_lm(tmp_path / "bert") if kind == "encoder" else tmp_path / "empty-folder"
    model.mkdir(exist_ok=True)
    data = _write(tmp_path / "quiz.json", QUIZ)
    assert main(["evaluate", "--model", model, "--data", data, "--output-dir", tmp_path / "out"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"gpt-finetune: error: {model}: cannot load a causal language model"), lines


def test_model_and_data_are_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(["evaluate", "--data", tmp_path / "x.json"])
    assert e.value.code == 2 and "the following arguments are required: --model" in capsys.readouterr().err


def _formats(tmp_path):
    "The same three question/answer pairs in every format `run` reads."
    qa = [("What is 2 plus 2?", "4"), ("Who wrote Hamlet?", "Shakespeare"), ("What is the capital of France?", "Paris")]
    chat = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    files = {
        "pairs.json": json.dumps([{"input": q, "output": a} for q, a in qa]),
        "pairs.jsonl": "\n".join(json.dumps({"input": q, "output": a}) for q, a in qa),
        "pairs.csv": "input,output\n" + "\n".join(f'"{q}",{a}' for q, a in qa),
        "pairs.tsv": "input\toutput\n" + "\n".join(f"{q}\t{a}" for q, a in qa),
        "alpaca.json": json.dumps([{"instruction": q, "input": "", "output": a} for q, a in qa]),
        "openai.jsonl": "\n".join(json.dumps({"messages": chat(q, a)}) for q, a in qa),
        "sharegpt.jsonl": "\n".join(json.dumps({"conversations": [{"from": "human", "value": q},
                                                                  {"from": "gpt", "value": a}]})
                                     for q, a in qa),
        "prompt_completion.jsonl": "\n".join(json.dumps({"prompt": q, "completion": a}) for q, a in qa),
    }
    for name, text in files.items(): (tmp_path / name).write_text(text, encoding="utf-8")
    from datasets import Dataset
    Dataset.from_list([{"input": q, "output": a} for q, a in qa]).save_to_disk(str(tmp_path / "saved_dataset"))
    return [tmp_path / n for n in files] + [tmp_path / "saved_dataset"], qa


def test_evaluate_reads_every_format_run_reads(tmp_path):
    "`evaluate` and `run` read through the one loader: the same records from every format."
    from gpt_finetune.cli import load_eval_records
    from gpt_finetune.formats import read_records
    paths, qa = _formats(tmp_path)
    for path in paths:
        records, counts = load_eval_records(path)
        assert [(r["input"], r["output"]) for r in records] == qa, path.name
        assert [r["messages"] for r in records] == [r["messages"] for r in read_records(path).records], path.name
        assert counts["records"] == 3 and counts["dropped"] == {}, path.name



# --- the general-knowledge probe: its own file, none, or a bad file ---

PROBE = [{"input": "What is 2 plus 2?", "output": "4", "accept": ["4", "four"]},
         {"input": "What is the capital of France?", "output": "Paris", "accept": ["Paris"]},
         {"input": "What colour is the sky?", "output": "blue", "accept": ["blue"]}]


def test_probe_file_against_the_same_model_keeps_everything(tiny_dir, tmp_path, monkeypatch):
    "The same model on both sides keeps every probe answer it had right; the report and metrics say so."
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    res = run_cli("evaluate", "--model", tiny_dir, "--baseline", tiny_dir, "--data", _write(tmp_path / "q.json", QUIZ),
                  "--probe", _write(tmp_path / "probe.json", PROBE), "--output-dir", out, "--max-new-tokens", 4)
    assert res.returncode == 0, res.stderr[-3000:]
    probe = json.loads((out / "metrics.json").read_text())["probe"]
    assert probe["questions"] == 3 and probe["kept"] == probe["base_right"] and probe["broken"] == []
    assert "General-knowledge probe" in res.stdout
    assert "## General knowledge: what fine-tuning kept" in (out / "report.md").read_text()


def test_probe_none_leaves_it_out(tiny_dir, tmp_path):
    out = tmp_path / "eval"
    res = run_cli("evaluate", "--model", tiny_dir, "--data", _write(tmp_path / "q.json", QUIZ), "--probe", "none",
                  "--output-dir", out, "--max-new-tokens", 4)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "probe" not in json.loads((out / "metrics.json").read_text())
    assert "General knowledge" not in (out / "report.md").read_text()


def test_a_bad_probe_file_is_one_line_before_any_model_loads(tmp_path):
    bad = _write(tmp_path / "probe.json", [{"input": "What is 2 plus 2?", "output": "4", "accept": "4"}])
    res = run_cli("evaluate", "--model", tmp_path / "no-such-model", "--data", _write(tmp_path / "q.json", QUIZ),
                  "--probe", bad, "--output-dir", tmp_path / "eval")
    assert res.returncode == 2 and "probe.json" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "eval").exists()
