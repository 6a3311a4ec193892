"""Two machines, simulated on one: two `torchrun` launchers with `--nnodes 2 --node-rank 0/1` meet at a localhost
rendezvous, one process each with batch 4, and train exactly what one process with batch 8 trains."""
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
SCRIPT = str(Path(__file__).parent / "tiny_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_two_launchers_on_a_localhost_rendezvous_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--epochs", 1, "--save-every", 0]
    res = subprocess.run(list(map(str, [sys.executable, SCRIPT, "--out", one, "--batch-size", 8, *args])),
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    port = _free_port()
    logs = [open(tmp_path / f"node{n}.log", "w+") for n in (0, 1)]  # files, not pipes: a full pipe stalls a launcher
    nodes = [subprocess.Popen(list(map(str, [BIN / "torchrun", "--nnodes", 2, "--node-rank", n, "--nproc-per-node", 1,
                                             "--master-addr", "127.0.0.1", "--master-port", port, SCRIPT,
                                             "--out", two, "--batch-size", 4, *args])),
                              stdout=log, stderr=subprocess.STDOUT, env=ENV) for n, log in zip((0, 1), logs)]
    try: codes = [p.wait(timeout=300) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None: p.kill()
    logs[0].seek(0); logs[1].seek(0)
    assert codes == [0, 0], logs[0].read()[-2000:] + logs[1].read()[-2000:]
    a, b = (json.loads((d / "stats.json").read_text()) for d in (one, two))
    assert a["steps"] == b["steps"] == 6
    for (sa, la), (sb, lb) in zip(a["train"], b["train"]): assert sa == sb and la == pytest.approx(lb, abs=1e-4)
    wa, wb = torch.load(one / "final.pt"), torch.load(two / "final.pt")
    for k in wa: torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    # global rank 1 ran under the second launcher ("machine") and saw the other half of each step's batch
    assert (two / "steps-rank1.jsonl").read_text().count("\n") == 6
