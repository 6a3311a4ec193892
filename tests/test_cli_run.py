"""The main job end to end through the real `gpt-finetune` command, on tiny random models."""
import json

from conftest import run_cli


def _pairs(n=40):
    return [{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(n)]


def test_run_writes_every_output(tiny_dir, tmp_path):
    data = tmp_path / "my.json"
    records = _pairs() + [_pairs()[0], {"input": "Nothing?", "output": "  "}]
    data.write_text(json.dumps(records))
    out = tmp_path / "out"
    res = run_cli("run", "--data", data, "--model", tiny_dir, "--output-dir", out, "--epochs", 2,
                  "--learning-rate", 3e-3, "--max-new-tokens", 8, "--eval-every", 3)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "perplexity" in res.stdout and "fine-tuned" in res.stdout  # the before/after table
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"base", "finetuned", "data", "train", "comparison"}
    for key in ("eval_loss", "perplexity", "exact_match", "token_f1", "rougeL", "bleu", "chrf", "stop_rate"):
        row = m["comparison"][key]
        assert abs(row["diff"] - (m["finetuned"][key] - m["base"][key])) < 1e-9 and len(row["diff_ci"]) == 2, key
    assert m["comparison"]["eval_loss"]["diff_ci"][1] < 0  # training lowered the answer loss beyond the noise
    assert "best_step" in m["train"]["overfitting"]
    report = (out / "report.md").read_text()
    assert "## Base vs fine-tuned" in report and "### Biggest wins" in report and "## Training: overfitting view" in report
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG" and (out / "overfitting.png").read_bytes()[:4] == b"\x89PNG"
    for side in ("base", "finetuned"):
        for key in ("eval_loss", "perplexity", "exact_match", "rougeL", "stop_rate"):
            assert key in m[side], (side, key)
        for key in ("exact_match", "rougeL", "stop_rate"):
            assert 0 <= m[side][key] <= 1
    assert m["finetuned"]["eval_loss"] < m["base"]["eval_loss"]
    assert m["data"]["dropped"] == {"empty_text": 1, "duplicate": 1}
    assert sum(m["data"]["kept"].values()) == 40 and m["data"]["records"] == 42
    assert m["train"]["train_tokens"] > 0 and m["train"]["tokens_per_s"] > 0 and m["train"]["runtime_s"] > 0
    dropped = [json.loads(l) for l in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["source"]) for d in dropped] == [("empty_text", "my.json:1 record 41"), ("duplicate", "my.json:1 record 40")]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    answers = [json.loads(l) for l in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == m["data"]["kept"]["test"]
    names = {p.name for p in (out / "model").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert "Evaluation on the held-out test split" in (out / "model" / "README.md").read_text()

    gen = run_cli("generate", "--model", out / "model", "--max-new-tokens", 6, "What is 3 plus 3?")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.strip()
