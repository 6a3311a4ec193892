"""The `gpt-finetune` command line: every help screen works and is quick, choices are enforced, and the options
are the library's own dataclasses (no restated copies that could drift)."""
import argparse, json, subprocess, sys
from dataclasses import MISSING, fields, is_dataclass

import pytest

from conftest import run_cli
from gpt_finetune import __version__
from gpt_finetune.cli import COMMANDS, build_parser


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_screen_works(command):
    res = run_cli(*([command] if command else []), "--help", timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: gpt-finetune"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, gpt_finetune.cli, gpt_finetune.job, gpt_finetune.options; "
            "print([m for m in ('torch', 'transformers', 'fastapi', 'datasets') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_enumerated_options_refuse_other_values():
    res = run_cli("run", "--precision", "bf17", timeout=60)
    assert res.returncode == 2 and res.stderr.splitlines() == [
        "gpt-finetune run: error: argument --precision: 'bf17' is not one of auto, bf16, fp16, fp32"], res.stderr
    for flag, bad in (("--report-to", "tensorbored"), ("--quantize", "3"), ("--too-long", "cut"), ("--device", "tpu"),
                      ("--scheduler", "cosine_with_min_lr")):
        assert run_cli("run", flag, bad, timeout=60).returncode == 2, flag
    assert "'q4' is not one of f16" in run_cli("export", "--model", "m", "--out-type", "q4", timeout=60).stderr


def test_every_number_has_a_range_and_every_option_a_check():
    "Every numeric field of every command's options declares its range, so no command takes nan, inf or -1 blindly."
    from gpt_finetune.options import option_type
    for _, config, _, _ in COMMANDS.values():
        for cls in _option_classes(config):
            for f in fields(cls):
                if option_type(f) in (int, float):
                    assert f.metadata.get("bounds") or f.metadata.get("choices"), f"{cls.__name__}.{f.name}"


def test_scheduler_choices_are_transformers_schedulers():
    from transformers.trainer_utils import SchedulerType
    from gpt_finetune.options import SCHEDULERS
    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_server_connection_limits_are_flags():
    serve = _help_lines(build_parser().commands["serve"])
    for flag, default in (("--timeout-keep-alive", "5.0"), ("--read-timeout", "30.0"), ("--limit-concurrency", "512")):
        assert f"(default: {default})" in serve[flag], (flag, serve.get(flag))


def test_version():
    res = run_cli("--version", timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"gpt-finetune {__version__}"


def _help_lines(parser):
    fmt = parser._get_formatter()
    return {a.option_strings[0]: fmt._expand_help(a) for a in parser._actions if a.option_strings and a.help}


def test_each_default_shown_once_and_flags_exist():
    parser = build_parser()
    for name, sub in parser.commands.items():
        for flag, text in _help_lines(sub).items():
            assert text.count("default") <= 1, (name, flag, text)
    run = _help_lines(parser.commands["run"])
    for flag in ("--trust-remote-code", "--allow-pickle", "--config", "--report-to", "--quantize", "--adapter-only",
                 "--push-to-hub", "--overwrite", "--keep-checkpoints", "--reuse-baseline", "--data", "--resume"):
        assert flag in run, flag
    assert "(default: 7e-05)" in run["--learning-rate"] and "OUTPUT_DIR/checkpoints" in run["--save-every"]
    assert "checkpoints" in run["--output-dir"] and "config.yaml" in run["--output-dir"]
    assert {"--system", "--temperature", "--max-tokens", "--model"} <= set(_help_lines(parser.commands["chat"]))
    # visible to everyone in `ps`: the key comes from the environment
    assert "--api-key" not in _help_lines(parser.commands["serve"])
    assert "--learning-rate" not in _help_lines(parser.commands["sweep"])  # swept


def _option_classes(cls, seen=None):
    "Every dataclass a command's options are made of, its groups included."
    seen = set() if seen is None else seen
    seen.add(cls)
    for f in fields(cls):
        default = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
        if is_dataclass(default): _option_classes(type(default), seen)
    return seen


def test_commands_use_the_library_option_classes():
    "The CLI builds its options from the library's dataclasses themselves: one definition of each default."
    from gpt_finetune import options, scale, serve, train, worker
    used = set().union(*(_option_classes(config) for _, config, _, _ in COMMANDS.values()))
    for cls in (options.TrainConfig, options.ServeConfig, options.SweepGrid, options.RunConfig):
        assert cls in used, cls
    assert train.TrainConfig is options.TrainConfig and scale.SweepGrid is options.SweepGrid
    assert worker.ServeConfig is serve.ServeConfig is options.ServeConfig
    for cls in used:  # nothing restated: no other module defines a class of the same name
        assert cls.__module__ in ("gpt_finetune.options", "gpt_finetune.cli"), cls


def test_trust_flags_reach_every_loading_command():
    "The loading errors tell users to pass --trust-remote-code or --allow-pickle: every command that loads has them."
    parser = build_parser()
    for name in ("run", "prepare", "evaluate", "generate", "chat", "serve", "sweep"):
        assert {"--trust-remote-code", "--allow-pickle"} <= set(_help_lines(parser.commands[name])), name


def test_clean_options_map_onto_clean_config():
    from gpt_finetune.clean import CleanConfig
    assert [f.name for f in fields(CleanConfig)][:3] == ["near_dup_threshold", "conflicts", "min_output_chars"]
