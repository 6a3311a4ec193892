"""The main job end to end through the real `gpt-finetune` command, on tiny random models."""
import json
from pathlib import Path

import pytest

from conftest import run_cli


def _pairs(n=40):
    return [{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(n)]


def test_run_writes_every_output(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "my.json"
    records = _pairs() + [_pairs()[0], {"input": "Nothing?", "output": "  "}]
    data.write_text(json.dumps(records))
    out = tmp_path / "out"
    res = run_cli("run", "--data", data, "--model", tiny_dir, "--output-dir", out, "--epochs", 2,
                  "--learning-rate", 3e-3, "--max-new-tokens", 8, "--eval-every", 3)
    assert res.returncode == 0, res.stderr[-3000:]
    # the before/after table
    assert "perplexity" in res.stdout and "fine-tuned" in res.stdout and "95 % interval" in res.stdout
    assert "time: base evaluation" in res.stdout and "final evaluation" in res.stdout and "disk: " in res.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"base", "finetuned", "data", "train", "comparison", "timings", "disk", "probe"}
    for phase in ("base_evaluation_s", "training_s", "training_evaluations_s", "final_evaluation_s", "saving_s"):
        assert m["timings"][phase] >= 0, phase
    assert m["timings"]["base_reused"] is False and m["timings"]["training_s"] >= m["train"]["runtime_s"]
    for key in ("eval_loss", "perplexity", "exact_match", "token_f1", "rougeL", "bleu", "chrf", "stop_rate"):
        row = m["comparison"][key]
        assert abs(row["diff"] - (m["finetuned"][key] - m["base"][key])) < 1e-9 and len(row["diff_ci"]) == 2, key
    assert m["comparison"]["eval_loss"]["diff_ci"][1] < 0  # training lowered the answer loss beyond the noise
    assert "best_step" in m["train"]["overfitting"]
    report = (out / "report.md").read_text()
    assert ("## Base vs fine-tuned" in report and "### Biggest wins" in report
            and "## Training: overfitting view" in report)
    assert ((out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
            and (out / "overfitting.png").read_bytes()[:4] == b"\x89PNG")
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
    assert [(d["reason"], d["source"]) for d in dropped] == [("empty_text", "my.json:1 record 41"),
                                                             ("duplicate", "my.json:1 record 40")]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    answers = [json.loads(l) for l in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == m["data"]["kept"]["test"]
    names = {p.name for p in (out / "model").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert "Evaluation on the held-out test split" in (out / "model" / "README.md").read_text()

    gen = run_cli("generate", "--model", out / "model", "--max-tokens", 6, "--temperature", 0, "What is 3 plus 3?")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.strip()


def test_base_answers_are_reused(llama_dir, tmp_path, monkeypatch):
    "The same baseline on the same test records with the same settings is scored once; anything else is scored again."
    from gpt_finetune.cli import main
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(cache))
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _pairs(6)))
    def evaluate(out, *more):
        assert main(["evaluate", "--model", llama_dir, "--baseline", llama_dir, "--data", data,
                     "--output-dir", tmp_path / out, "--max-new-tokens", 4, "--n-resamples", 50, *more]) == 0
        return json.loads((tmp_path / out / "metrics.json").read_text())
    first, again = evaluate("a"), evaluate("b")
    assert (first["timings"]["baseline_reused"], again["timings"]["baseline_reused"]) == (False, True)
    assert again["base"] == first["base"]
    assert len(list((cache / "baselines").glob("*.json"))) == 2  # the test answers and the probe's, once each
    assert evaluate("c", "--max-new-tokens", 5)["timings"]["baseline_reused"] is False  # other settings: other answers
    assert evaluate("d", "--no-reuse-baseline")["timings"]["baseline_reused"] is False


def test_export_command_writes_a_gguf_file(llama_dir, tmp_path, capsys):
    from gpt_finetune.cli import main
    out = tmp_path / "tiny-q8.gguf"
    assert main(["export", "--model", llama_dir, "--out-file", out, "--out-type", "q8_0"]) == 0
    assert out.read_bytes()[:4] == b"GGUF" and "llama-cli -m" in capsys.readouterr().out


def test_quantize_is_refused_in_one_line_without_cuda(llama_dir, tmp_path, capsys):
    import torch
    from gpt_finetune.cli import main
    if torch.cuda.is_available(): pytest.skip("a CUDA GPU is present: QLoRA can run here")
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _pairs(6)))
    assert main(["run", "--data", data, "--model", llama_dir, "--quantize", "4", "--output-dir", tmp_path / "out"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and not (tmp_path / "out").exists(), lines


def test_run_replays_the_base_models_own_answers(llama_dir, tmp_path, monkeypatch):
    "Replay is the same on every architecture (generation through the chat template, then rows): one is run."
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    data, prompts = tmp_path / "my.json", tmp_path / "prompts.txt"
    data.write_text(json.dumps(_pairs(30)))
    prompts.write_text("What is 7 plus 7?\nWhy is the sky blue?\n\nName a colour.\nWhy is the sky blue?\n")
    common = ("--data", data, "--model", llama_dir, "--epochs", 1, "--max-new-tokens", 4, "--probe", "none")
    res = run_cli("run", *common, "--output-dir", tmp_path / "on", "--replay", prompts)
    assert res.returncode == 0, res.stderr[-3000:]
    on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    replay = on["data"]["replay"]
    # three distinct prompts; the sum is the user's own kind of question: the base model's style is not replayed there
    assert (replay["prompts"], replay["unlike_your_data"]) == (3, 2)
    # each of the two answers either trains, or is left out as cut short or empty
    assert replay["rows"] + replay["cut_short"] + replay["empty"] == 2
    assert f"replay: {replay['rows']} of the base model's own answers" in res.stdout  # what was left out is said
    again = run_cli("run", *common, "--output-dir", tmp_path / "again", "--replay", prompts)
    assert again.returncode == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["data"]["replay"] == replay


def _given_replay(answers, prompt_lines: str, llama_dir, tmp_path, monkeypatch) -> tuple[list[str], Path]:
    "A run's common flags and its replay prompt file, with `answers` standing in for the base model's replay answers."
    import gpt_finetune.replay as replay
    monkeypatch.setattr(replay, "replay_answers", answers)
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    data, prompts = tmp_path / "my.json", tmp_path / "prompts.txt"
    data.write_text(json.dumps(_pairs(30)))
    prompts.write_text(prompt_lines)
    return ["--data", str(data), "--model", str(llama_dir), "--epochs", "1", "--max-new-tokens", "4",
            "--probe", "none", "--no-progress"], prompts


def test_replayed_answers_that_ended_train_and_cut_ones_do_not(llama_dir, tmp_path, monkeypatch, capsys):
    # a tiny random model never ends an answer, so the base model's answers are given; the rest of the run is real
    from gpt_finetune.cli import main
    def answers(model, tokenizer, prompts, **options):
        ended = lambda p: "sky" in p
        return [{"input": p, "output": "Sunlight scatters." if ended(p) else "Red, orange and",
                 "finish_reason": "stop" if ended(p) else "length"} for p in prompts]
    common, prompts = _given_replay(answers, "Why is the sky blue?\nName the colours of a rainbow.\n", llama_dir,
                                    tmp_path, monkeypatch)
    assert main(["run", *common, "--output-dir", str(tmp_path / "on"), "--replay", str(prompts)]) == 0
    assert "replay: 1 of the base model's own answers" in capsys.readouterr().out
    assert main(["run", *common, "--output-dir", str(tmp_path / "off"), "--replay", "none"]) == 0
    assert "replay:" not in capsys.readouterr().out
    on, off = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("on", "off"))
    assert on["data"]["replay"] == {"prompts": 2, "unlike_your_data": 2, "rows": 1, "cut_short": 1, "empty": 0}
    assert on["train"]["train_tokens"] > off["train"]["train_tokens"]  # the answer that ended trained
    assert off["data"]["replay"] is None


def test_replay_answers_are_cached_per_length_limit(llama_dir, tmp_path, monkeypatch):
    # the base model's answers are cached between runs; a different length limit must ask the model again, not reuse
    import gpt_finetune.replay as replay
    from gpt_finetune.cli import main
    asked = []
    def answers(model, tokenizer, prompts, max_new_tokens=None, **options):
        asked.append(max_new_tokens)
        return [{"input": p, "output": "Sunlight scatters.", "finish_reason": "stop"} for p in prompts]
    common, prompts = _given_replay(answers, "Why is the sky blue?\n", llama_dir, tmp_path, monkeypatch)
    first = replay.REPLAY_TOKENS
    for limit in (first, first, 2 * first):
        monkeypatch.setattr(replay, "REPLAY_TOKENS", limit)
        run = ["run", *common, "--output-dir", str(tmp_path / "out"), "--replay", str(prompts), "--overwrite"]
        assert main(run) == 0
    assert asked == [first, 2 * first]  # run 2 reused run 1's answers; run 3, with another limit, asked again


@pytest.mark.parametrize("content, why", [(b"fine\n\xff\xfe\n", "bad.txt:2: not UTF-8 text"),
                                          (b"fine\nnul \x00 here\n", "bad.txt:2: a NUL character"),
                                          (b"\n  \n", "bad.txt: no replay prompts")])
def test_a_bad_replay_file_stops_before_anything_is_written(llama_dir, tmp_path, capsys, content, why):
    from gpt_finetune.cli import main  # in process: the file is refused before any model loads
    (tmp_path / "bad.txt").write_bytes(content)
    (tmp_path / "my.json").write_text(json.dumps(_pairs(10)))
    code = main(["run", "--data", tmp_path / "my.json", "--model", llama_dir, "--output-dir", tmp_path / "out",
                 "--replay", tmp_path / "bad.txt"])
    err = capsys.readouterr().err
    assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert not (tmp_path / "out").exists()


def _runs_differing_in_one_option(model_dir, tmp_path, monkeypatch, pairs: int, epochs: int, option: str, *values):
    "For each value of `option`, a quick run on the same data: (output folder, metrics' `train`, stdout)."
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "my.json"
    data.write_text(json.dumps(_pairs(pairs)))
    runs = []
    for value in values:
        out = tmp_path / f"out{value}"
        res = run_cli("run", "--data", data, "--model", model_dir, "--output-dir", out, "--epochs", epochs,
                      "--eval-every", 2, "--learning-rate", 3e-3, "--max-new-tokens", 4, "--probe", "none",
                      option, value)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append((out, json.loads((out / "metrics.json").read_text())["train"], res.stdout))
    return runs


def _valid_losses(out: Path) -> dict:
    "Step -> validation loss, from a run's step log."
    import csv
    rows = csv.DictReader((out / "training_log.csv").open())
    return {int(r["step"]): float(r["valid_loss"]) for r in rows if r["valid_loss"]}


def test_a_run_goes_on_past_its_planned_passes_only_while_the_validation_loss_falls(llama_dir, tmp_path, monkeypatch):
    "The step budget is the Trainer's, the same for every architecture: one is run."
    runs = _runs_differing_in_one_option(llama_dir, tmp_path, monkeypatch, 80, 2, "--extend-epochs", "1", "0")
    (on, on_valid, on_out), (off, off_valid, off_out) = ((train, _valid_losses(out), stdout)
                                                         for out, train, stdout in runs)
    planned = off["planned_steps"]
    assert on["planned_steps"] == planned and off["steps"] == planned and not off["extended"]
    # the planned passes are the same run with or without the extension: same schedule, same losses
    assert all(abs(on_valid[s] - off_valid[s]) < 1e-6 for s in off_valid if s <= planned)
    still_falling = on_valid[planned] == min(l for s, l in on_valid.items() if s <= planned)
    assert on["extended"] == still_falling and (on["steps"] > planned) == still_falling
    assert on["steps"] <= planned * 3 // 2  # one more pass at most
    assert ("training went on" in on_out) == still_falling and "training went on" not in off_out


def test_the_saved_weights_are_blended_toward_the_starting_model(gpt2_dir, tmp_path, monkeypatch):
    "On GPT-2, whose output layer is tied to its embeddings: a shared weight is blended once, not twice."
    import torch
    from safetensors.torch import load_file
    runs = _runs_differing_in_one_option(gpt2_dir, tmp_path, monkeypatch, 40, 1, "--blend", "1", "0.5")
    (full, trained, full_out), (half, blended, half_out) = (
        (train, load_file(out / "model" / "model.safetensors"), stdout) for out, train, stdout in runs)
    start = load_file(Path(gpt2_dir) / "model.safetensors")
    assert full["trained_eval_loss"] == pytest.approx(half["trained_eval_loss"])  # the same training
    assert full["final_eval_loss"] == full["trained_eval_loss"] and half["blend"] == 0.5
    assert half["final_eval_loss"] != pytest.approx(half["trained_eval_loss"])  # the blended weights' own loss
    # every saved weight halfway between the starting model's and the trained one's. `trained` comes from the other
    # run: two trainings agree only to float32 rounding (summation order varies with load), so 1e-5, not 1e-6; a
    # shared weight blended twice would sit a quarter of its move away instead, far outside it
    for k in start:
        torch.testing.assert_close(blended[k], start[k] + 0.5 * (trained[k] - start[k]), rtol=0, atol=1e-5, msg=k)
    assert "saved weights: 50% of the way from the base model" in half_out and "saved weights" not in full_out
