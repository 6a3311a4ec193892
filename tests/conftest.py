import subprocess, sys
from pathlib import Path

import pytest

from gpt_finetune.model import tiny_model

CLI = str(Path(sys.executable).parent / "gpt-finetune")


def run_cli(*args, timeout=600):
    "Run the installed `gpt-finetune` command; returns the CompletedProcess."
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_dir(request, tmp_path_factory):
    "A tiny random model of each architecture, saved as a Hugging Face folder."
    model, tok = tiny_model(request.param)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
