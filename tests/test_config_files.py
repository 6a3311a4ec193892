"""`--config FILE.yaml|json` on every command: sections or plain names, typed flags win, mistakes fail like flags do,
the shipped examples parse, and a run's own config.yaml repeats the run."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from gpt_finetune.cli import COMMANDS, config_from, parse_args
from gpt_finetune.options import RunConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _cfg(*argv):
    command = argv[0]
    return config_from(COMMANDS[command][1](), parse_args([str(a) for a in argv]))


def test_yaml_sections_and_names_with_flags_winning(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("data: my.jsonl\ntrain:\n  epochs: 1\n  precision: bf16\nlora:\n  enabled: true\n"
                    "learning-rate: 2.0e-4\noutput:\n  output_dir: outputs/mine\nmodel: some/model\n")
    cfg = _cfg("run", "--config", path, "--epochs", "3", "--no-lora")
    assert (cfg.data.path, cfg.model.name, cfg.train.epochs, cfg.lora.enabled, cfg.train.precision,
            cfg.train.learning_rate, cfg.output.output_dir) == (
        "my.jsonl", "some/model", 3.0, False, "bf16", 2e-4, "outputs/mine")
    assert cfg.train.batch_size == RunConfig().train.batch_size  # untouched options keep their defaults


def test_json_config_for_other_commands(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"model": "outputs/run/model", "temperature": 0, "max_tokens": 12,
                                "system": "Be brief."}))
    cfg = _cfg("chat", "--config", path, "--max-tokens", "20")
    assert (cfg.model.name, cfg.temperature, cfg.max_tokens, cfg.system) == ("outputs/run/model", 0.0, 20, "Be brief.")
    (tmp_path / "e.json").write_text(json.dumps({"model": "m", "baseline": "default", "max_new_tokens": 8}))
    cfg = _cfg("evaluate", "--config", tmp_path / "e.json", "--data", "t.jsonl")
    assert (cfg.model.name, cfg.baseline, cfg.eval.max_new_tokens, cfg.data) == ("m", "default", 8, "t.jsonl")


@pytest.mark.parametrize("content, message", [
    ("train:\n  epochz: 1\n", "unknown option 'train.epochz'"),
    ("precision: bf17\n", "precision: 'bf17' is not one of auto, bf16, fp16, fp32"),
    ("epochs: many\n", "epochs: must be a finite number > 0 and <= 10000, got 'many'"),
    ("- a list\n", "expected a mapping"),
    ("train: [unclosed\n", "cannot read the config file"),
])
def test_config_mistakes_fail_like_flags(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    res = run_cli("run", "--config", path, timeout=60)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1 and str(path) in res.stderr, res.stderr  # one line, naming the file


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.stem.split("_")[0] in COMMANDS),
                         ids=lambda p: p.name)
def test_shipped_examples_parse(path):
    command = path.stem.split("_")[0]
    argv = [command, "--config", str(path)] + (["--data", "x.jsonl"] if command == "evaluate" else [])
    cfg = _cfg(*argv)
    values = yaml.safe_load(path.read_text())
    if command == "run":
        for section in values: assert asdict(cfg)[section].items() >= values[section].items(), section


def test_run_config_yaml_repeats_the_run(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."})
                              for i in range(24)))
    first = run_cli("run", "--data", data, "--model", llama_dir, "--output-dir", tmp_path / "a", "--epochs", 1,
                    "--learning-rate", 3e-3, "--max-new-tokens", 4, "--eval-every", 0, "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    written = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert written["data"]["path"] == str(data) and written["train"]["learning_rate"] == 3e-3
    again = run_cli("run", "--config", tmp_path / "a" / "config.yaml", "--output-dir", tmp_path / "b")
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a["finetuned"]["eval_loss"] == b["finetuned"]["eval_loss"] and a["data"]["kept"] == b["data"]["kept"]
    assert a["train"]["steps"] == b["train"]["steps"]
    assert written["train"]["output_dir"] == str(tmp_path / "a" / "checkpoints")  # the trainer's folder, as it was
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) == {
        **written, "output": {**written["output"], "output_dir": str(tmp_path / "b")},
        "train": {**written["train"], "output_dir": str(tmp_path / "b" / "checkpoints")}}
