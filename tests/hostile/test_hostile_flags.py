"""Hostile values on the command line: every option is checked by its own field before anything loads, and a bad
value is one line on stderr that names the flag, exit status 2, never a traceback and never a run that trains on
nonsense. Library users get the same check from the dataclasses."""
import math, subprocess, sys
from pathlib import Path

import pytest

from gpt_finetune.cli import main
from gpt_finetune.options import ServeConfig, SweepGrid, TrainConfig

CLI = str(Path(sys.executable).parent / "gpt-finetune")
NOWHERE = ["--model", "/nonexistent/model"]  # if a value were accepted, the command would stop here instead
RUN = ["run", "--data", "/nonexistent/data.jsonl", *NOWHERE]


def _outcome(argv, capsys):
    "Exit status and stderr lines of `gpt-finetune ARGV`, run in this process (an exception fails the test)."
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err.splitlines()


CASES = [  # (arguments, the flag the one line must name, what it must say)
    (RUN + ["--learning-rate", "nan"], "--learning-rate", "must be a finite number > 0"),
    (RUN + ["--learning-rate", "inf"], "--learning-rate", "got inf"),
    (RUN + ["--learning-rate", "0"], "--learning-rate", "> 0"),
    (RUN + ["--learning-rate=-1e-4"], "--learning-rate", "> 0"),
    (RUN + ["--epochs", "-1"], "--epochs", "must be a finite number > 0"),
    (RUN + ["--epochs", "nan"], "--epochs", "got nan"),
    (RUN + ["--epochs", "0"], "--epochs", "> 0"),
    (RUN + ["--batch-size", "-5"], "--batch-size", "must be a whole number >= 0"),
    (RUN + ["--batch-size", "2.5"], "--batch-size", "must be a whole number"),
    (RUN + ["--grad-accum", "0"], "--grad-accum", ">= 1"),
    (RUN + ["--warmup", "2"], "--warmup", "<= 1"),
    (RUN + ["--weight-decay", "-0.1"], "--weight-decay", ">= 0"),
    (RUN + ["--log-every", "0"], "--log-every", ">= 1"),
    (RUN + ["--seed", "-1"], "--seed", ">= 0"),
    (RUN + ["--seed", str(2**64)], "--seed", "<= 4294967295, got"),
    (RUN + ["--seed", "9" * 400], "--seed", "<= 4294967295, got"),
    (RUN + ["--save-limit", "-1"], "--save-limit", ">= 0"),
    (RUN + ["--scheduler", "bogus"], "--scheduler", "'bogus' is not one of linear, cosine"),
    (RUN + ["--valid-frac", "1.5"], "--valid-frac", "must be a finite number >= 0 and < 1"),
    (RUN + ["--test-frac", "-0.1"], "--test-frac", ">= 0"),
    (RUN + ["--max-length", "0"], "--max-length", ">= 1"),
    (RUN + ["--near-dup", "1.5"], "--near-dup", "<= 1"),
    (RUN + ["--lora-r", "0"], "--lora-r", ">= 1"),
    (RUN + ["--max-new-tokens", "0"], "--max-new-tokens", ">= 1"),
    (RUN + ["--eval-batch-size", "-3"], "--eval-batch-size", ">= 1"),
    (RUN + ["--output-dir", ""], "--output-dir", "must not be empty"),
    (RUN + ["--overwrite=false"], "--overwrite", "ignored explicit argument"),
    (["serve", *NOWHERE, "--max-queue", "0"], "--max-queue", "must be a whole number >= 1"),
    (["serve", *NOWHERE, "--port", "99999"], "--port", "must be a whole number >= 1 and <= 65535"),
    (["serve", *NOWHERE, "--port", "0"], "--port", ">= 1"),
    (["serve", *NOWHERE, "--window-ms", "-1"], "--window-ms", ">= 0"),
    (["serve", *NOWHERE, "--max-body-bytes", "0"], "--max-body-bytes", ">= 1"),
    (["serve", *NOWHERE, "--timeout-keep-alive", "0"], "--timeout-keep-alive", "> 0"),
    (["serve", *NOWHERE, "--read-timeout", "nan"], "--read-timeout", "> 0"),
    (["serve", *NOWHERE, "--limit-concurrency", "0"], "--limit-concurrency", ">= 1"),
    (["chat", *NOWHERE, "--temperature", "-1"], "--temperature", ">= 0"),
    (["generate", *NOWHERE, "--top-p", "0", "hi"], "--top-p", "> 0"),
    (["generate", *NOWHERE, "--max-tokens", "0", "hi"], "--max-tokens", ">= 1"),
    (["evaluate", *NOWHERE, "--data", "/nonexistent/t.jsonl", "--n-resamples", "0"], "--n-resamples", ">= 1"),
    (["sweep", "--data", "/nonexistent/d.jsonl", *NOWHERE, "--lr-grid", "1e-4,nan"], "--lr-grid", "got nan"),
    (["sweep", "--data", "/nonexistent/d.jsonl", *NOWHERE, "--lora-r-grid", "0,-8"], "--lora-r-grid", "whole number"),
    (["sweep", "--data", "/nonexistent/d.jsonl", *NOWHERE, "--samples", "-1"], "--samples", ">= 0"),
]


def _id(argv, flag, _):
    return f"{argv[0]} {flag} {argv[argv.index(flag) + 1]}" if flag in argv else f"{argv[0]} {argv[-1]}"


@pytest.mark.parametrize("argv, flag, says", CASES, ids=[_id(*c) for c in CASES])
def test_a_bad_flag_value_is_one_line_naming_the_flag(argv, flag, says, capsys):
    code, err = _outcome(argv, capsys)
    assert code == 2 and len(err) == 1 and flag in err[0] and says in err[0], err


def test_fractions_that_leave_nothing_to_train_on(capsys):
    code, err = _outcome(RUN + ["--valid-frac", "0.6", "--test-frac", "0.5"], capsys)
    assert code == 2 and err == ["gpt-finetune: error: DataOptions: valid_frac + test_frac must be below 1, "
                                 "got 0.6 + 0.5"], err


@pytest.mark.parametrize("argv", [["run", "--learning-rate", "nan"], ["run", "--epochs", "-1"],
                                  ["serve", "--model", "m", "--port", "99999"]], ids=" ".join)
def test_the_installed_command_stops_before_loading_anything(argv):
    res = subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"gpt-finetune {argv[0]}: error: argument {argv[-2]}: "), res.stderr


@pytest.mark.parametrize("make, says", [
    (lambda: TrainConfig(learning_rate=math.nan), "TrainConfig.learning_rate: must be a finite number > 0"),
    (lambda: TrainConfig(epochs=-1), "TrainConfig.epochs: must be a finite number > 0"),
    (lambda: TrainConfig(progress="no"), "TrainConfig.progress: must be true or false"),
    (lambda: ServeConfig(port=99999), "ServeConfig.port: must be a whole number >= 1 and <= 65535"),
    (lambda: ServeConfig(max_queue=0), "ServeConfig.max_queue: must be a whole number >= 1"),
    (lambda: SweepGrid(lr_grid="nan"), "SweepGrid.lr_grid: each value must be a finite number > 0"),
], ids=["lr-nan", "epochs", "bool-string", "port", "max-queue", "grid"])
def test_library_users_get_the_same_refusal(make, says):
    with pytest.raises(ValueError) as e: make()  # an `OptionError`
    assert says in str(e.value) and "\n" not in str(e.value)
