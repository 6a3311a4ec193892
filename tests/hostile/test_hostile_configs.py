"""Hostile config files (`--config FILE`): a switch written as a string means what the string says, every value is
checked by its field, and unknown keys, wrong types, alias bombs, huge, endless, deeply nested or undecodable files
are each one line on stderr naming the file (and the key), exit status 2, no traceback, in bounded time and memory."""
import subprocess, sys, time
from pathlib import Path

import pytest

from gpt_finetune.cli import COMMANDS, config_from, parse_args

CLI = str(Path(sys.executable).parent / "gpt-finetune")


def _cfg(tmp_path, text, command="run"):
    "The config that `gpt-finetune COMMAND --config FILE` would run with, FILE holding `text`."
    (tmp_path / "c.yaml").write_text(text)
    return config_from(COMMANDS[command][1](), parse_args([command, "--config", str(tmp_path / "c.yaml")]))


@pytest.mark.parametrize("text, on", [('"false"', False), ('"no"', False), ('"0"', False), ("'False'", False),
                                      ("off", False), ('"true"', True), ('"YES"', True), ("1", True), ("true", True)])
def test_a_switch_written_as_a_string_means_what_it_says(tmp_path, text, on):
    cfg = _cfg(tmp_path, f"output:\n  overwrite: {text}\ndata:\n  strict: {text}\n")
    assert (cfg.output.overwrite, cfg.data.strict) == (on, on)


def _refused(tmp_path, content, *argv, timeout=60):
    "Run the command on a config file holding `content` (text or bytes); returns its one stderr line."
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    t0 = time.monotonic()
    res = subprocess.run([CLI, *(argv or ["run"]), "--config", path], capture_output=True, text=True, timeout=timeout)
    assert time.monotonic() - t0 < timeout / 2
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert str(path) in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("content, says", [
    ("output:\n  overwrite: maybe\n", "output.overwrite: must be true or false (true/false/yes/no/1/0), got 'maybe'"),
    ("strict: 2\n", "strict: must be true or false"),
    ("learning_rate: .nan\n", "learning_rate: must be a finite number > 0 and <= 1, got nan"),
    ("train:\n  epochs: -1\n", "train.epochs: must be a finite number > 0"),
    ("epochs: .inf\n", "epochs: must be a finite number > 0"),
    ("batch_size: -5\n", "batch_size: must be a whole number >= 0"),
    ("batch_size: true\n", "batch_size: must be a whole number"),
    ("data:\n  valid_frac: 1.5\n", "data.valid_frac: must be a finite number >= 0 and < 1"),
    ("epochs: [1, 2]\n", "epochs: must be one value, got a list"),
    ("data: [a.jsonl, b.jsonl]\n", "data: must be one value, got a list"),
    ('data: "a\\0b.jsonl"\n', "data: must not contain a NUL character"),
    ("train:\n  epochz: 1\n", "unknown option 'train.epochz'"),
    ("precision: bf17\n", "precision: 'bf17' is not one of auto, bf16, fp16, fp32"),
    ("- a list\n", "expected a mapping of option names to values"),
    ("train: [unclosed\n", "cannot read the config file"),
    (b"epochs: 1\nsystem: caf\xe9\n", "cannot read the config file"),
    ("[" * 5000 + "]" * 5000 + "\n", "cannot read the config file"),
    ("base: &b {epochs: 1}\ntrain:\n  <<: *b\n", "line 1: YAML anchors and aliases (&name, *name) are not allowed"),
])
def test_bad_values_and_files_are_one_line(tmp_path, content, says):
    assert says in _refused(tmp_path, content)


def test_serve_settings_from_a_file(tmp_path):
    assert "serve.max_queue: must be a whole number >= 1" in _refused(tmp_path, "serve:\n  max_queue: 0\n", "serve",
                                                                      "--model", "m")
    assert "port: must be a whole number >= 1 and <= 65535, got 99999" in _refused(tmp_path, "port: 99999\n", "serve",
                                                                                   "--model", "m")


def _bomb(kind: str, levels: int = 9) -> str:
    "A billion laughs: each level names the previous one nine times, so `levels` levels expand to 9**levels values."
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]" if kind == "list" else "l0: &l0 {a: lol}"]
    for i in range(1, levels):
        refs = ", ".join(f"*l{i - 1}" for _ in range(9))
        lines.append(f"l{i}: &l{i} [{refs}]" if kind == "list" else
                     f"l{i}: &l{i} {{{', '.join(f'k{j}: *l{i - 1}' for j in range(9))}}}")
    return "\n".join(lines) + f"\nlearning_rate: *l{levels - 1}\n"


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_an_alias_bomb_under_a_known_key_is_refused_before_expanding(tmp_path, kind):
    line = _refused(tmp_path, _bomb(kind), timeout=60)
    assert "line 1: YAML anchors and aliases (&name, *name) are not allowed in config files" in line


def test_a_huge_or_endless_config_file_is_refused_unread(tmp_path):
    assert "larger than 1,048,576 bytes" in _refused(tmp_path, "# " + "x" * (2 << 20) + "\nepochs: 1\n")
    res = subprocess.run([CLI, "run", "--config", "/dev/zero"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "/dev/zero" in res.stderr, res.stderr
