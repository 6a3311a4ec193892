"""The README's quick start is a script that works: its commands, extracted from README.md, run in the order written.

They run in a fresh folder holding the clone's Makefile, as a clean clone would, with three stand-ins that keep the test
offline and within seconds, and leave each command's words as the README writes them:
- `.venv/bin/` links to this test's own environment, except `python`, which records the `pip install` that `make` asks
  for instead of downloading anything (the test checks that it installs what `serve` needs, with torch pinned);
- `make run` reads `ARGS` from the environment (a tiny random model and 40 pairs instead of SmolLM2 on 600);
- `serve` gets a free port (`--port N`), and the Python client's URL says the same port instead of 8000.
`make test` (every test, this one included) and `make lab` (opens a browser) are checked as dry runs (`make -n`).
"""
import configparser, json, os, re, shlex, signal, subprocess, sys, time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def quick_start() -> tuple[str, list[tuple[str, str]]]:
    "The quick-start section of README.md, and its code blocks in order as (language, text)."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return section, re.findall(r"```(sh|python)\n(.*?)```", section, re.S)


def commands(blocks) -> list[tuple[str, str]]:
    "Each shell line (its comment dropped) and each Python block, in order, as (kind, text)."
    steps = []
    for lang, text in blocks:
        if lang == "python": steps.append(("python", text))
        else: steps += [("sh", shlex.join(shlex.split(l, comments=True))) for l in text.splitlines() if l.strip()]
    return steps


def requirements(extras: list[str]) -> set[str]:
    "Lower-case distribution names that `pip install -e '.[extras]'` installs directly, read from settings.ini."
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    reqs = cfg["DEFAULT"]["requirements"].split()
    for extra in extras: reqs += cfg["DEFAULT"][f"{extra}_requirements"].split()
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in reqs}


@pytest.fixture
def clone(tmp_path):
    "A folder laid out as a fresh clone for `make`, with a `.venv/bin` that uses this environment's packages."
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("Makefile", "setup.py", "settings.ini", "README.md"):
        (work / name).write_bytes((ROOT / name).read_bytes())
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for p in VENV_BIN.iterdir():
        if p.name != "python": (bin_dir / p.name).symlink_to(p)
    (bin_dir / "python").write_text(  # records `python -m pip install ...`; anything else runs the real interpreter
        f'#!/bin/sh\nif [ "$1 $2 $3" = "-m pip install" ]; then shift 3; printf "%s\\n" "$@" > "{tmp_path}/pip.log"; '
        f'exit 0; fi\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return work


def run_step(argv: list[str], env: dict, cwd: Path, stdin: str = "", timeout: float = 120):
    res = subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{shlex.join(argv)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def split_env(line: str) -> tuple[dict, list[str]]:
    "`A=1 B=2 cmd args` as ({'A': '1', 'B': '2'}, ['cmd', 'args'])."
    words, env = shlex.split(line), {}
    while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def start_server(argv: list[str], env: dict, cwd: Path, port: int, timeout: float = 90):
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"serve exited: {proc.stdout.read()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200: return proc
        except httpx.TransportError: pass
        assert time.monotonic() < deadline, f"serve did not answer /health within {timeout:.0f} s"
        time.sleep(0.25)


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try: proc.wait(timeout=30)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def test_quick_start_runs_in_the_order_written(clone, llama_dir, tmp_path):
    from gpt_finetune.serve import free_port
    section, blocks = quick_start()
    steps = commands(blocks)
    kinds = [s if k == "python" else " ".join(split_env(s)[1][:2]) for k, s in steps]
    known = ["make run", "make test", ".venv/bin/gpt-finetune chat", ".venv/bin/gpt-finetune generate",
             ".venv/bin/gpt-finetune serve"]
    assert [k for k in kinds if not k.startswith("from openai")] == known, (
        f"the quick start's commands changed: {kinds}; teach this test the new ones")
    assert "`make lab`" in section

    pairs = [{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(40)]
    (data := tmp_path / "pairs.json").write_text(json.dumps(pairs))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPT_FINETUNE_CACHE": str(tmp_path / "cache"),
           "ARGS": f"--model {llama_dir} --data {data} --epochs 1 --max-new-tokens 8 --learning-rate 3e-3"}
    env.pop("MAKEFLAGS", None); env.pop("MAKELEVEL", None)
    server = None
    try:
        for kind, step in steps:
            if kind == "python":  # the README's client code, pointed at this test's port
                code = step.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
                assert code != step, "the client's URL changed: update this test"
                run_step([sys.executable, "-c", code], env, clone, timeout=120)  # the client raises unless answered
                continue
            extra_env, argv = split_env(step)
            step_env = {**env, **extra_env}
            if argv[:2] == ["make", "run"]:
                run_step(argv, step_env, clone, timeout=300)
                pip = (tmp_path / "pip.log").read_text().split("\n")
                target = pip[pip.index("-e") + 1]
                extras = re.findall(r"\[(.*)\]", target)
                assert "torch==2.13.0" in pip, pip
                missing = requirements(["serve"]) - requirements(extras[0].split(",") if extras else [])
                assert not missing, f"`make run` installs {target!r}, without {sorted(missing)}, which serve needs"
                assert (clone / "outputs" / "run" / "model" / "model.safetensors").exists()
            elif argv[:2] == ["make", "test"]:
                dry = run_step(["make", "-n", *argv[1:]], step_env, clone).stdout
                assert "nbdev_test" in dry and "pytest" in dry, dry
            elif argv[1:2] == ["chat"]:
                out = run_step(argv, step_env, clone, stdin="What is the largest lizard?\n/exit\n").stdout
                assert out.strip(), "chat printed no answer"
            elif argv[1:2] == ["generate"]:
                run_step(argv, step_env, clone)
            elif argv[1:2] == ["serve"]:
                server = start_server([*argv, "--port", str(port)], step_env, clone, port)
    finally:
        if server: stop(server)
    lab = run_step(["make", "-n", "lab"], env, clone).stdout
    assert "jupyter lab nbs/tutorials/01_finetune_your_questions.ipynb" in lab, lab
    assert '-e ".[notebooks' in lab, lab
