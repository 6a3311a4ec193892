import json, os, socket, subprocess, sys, time
from pathlib import Path

import httpx
import pytest

from gpt_finetune.model import tiny_model

CLI = str(Path(sys.executable).parent / "gpt-finetune")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: 2 processes on 2 cores


def free_port() -> int:
    "A TCP port free on 127.0.0.1 now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def run_ok(cmd, timeout=300, env=ONE_THREAD):
    "Run `cmd`; a failure fails the test with the end of its output."
    res = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def one_thread():
    "Tiny models run fastest on one thread of a shared CPU, where each small op otherwise waits for the others."
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "24 small input/output pairs in a JSON lines file: enough for a tiny run with a validation and a test split."
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."})
                              for i in range(24)))
    return path


def run_cli(*args, timeout=600):
    "Run the installed `gpt-finetune` command; returns the CompletedProcess."
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def save_tiny(tmp_path_factory, arch: str) -> Path:
    "A tiny random model of architecture `arch`, saved as a Hugging Face folder."
    model, tok = tiny_model(arch)
    path = tmp_path_factory.mktemp(f"tiny-{arch}")
    model.save_pretrained(path); tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_dir(request, tmp_path_factory):
    "A tiny random model of each architecture, saved as a Hugging Face folder."
    return save_tiny(tmp_path_factory, request.param)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    "A tiny random Llama (chat template), saved as a Hugging Face folder."
    return save_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    "A tiny random GPT-2 (tied output layer, Conv1D weights), saved as a Hugging Face folder."
    return save_tiny(tmp_path_factory, "gpt2")


def start_server(code: str, args: list, env: dict, timeout: float = 90):
    "Run `python -c code *args` as a server process and wait until its /health answers 200; returns (URL, process)."
    from gpt_finetune.serve import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args), str(port)],
                            # one thread: a tiny model on a shared CPU
                            env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited: {proc.stdout.read()}"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200: return url, proc
        except httpx.TransportError: pass
        assert time.monotonic() < deadline, f"the server did not start within {timeout:.0f} s"
        time.sleep(0.2)
