"""FSDP (PyTorch FSDP2 through the Trainer and accelerate) on two CPU processes, gloo: the weights are sharded
during training, the loss curve equals one process with the same global batch, a checkpoint written under FSDP
resumes to the same weights, and the saved model (the trained weights blended toward the start) is one ordinary
safetensors folder equal to the single process's."""
import json, os, shutil, socket, subprocess, sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
SCRIPT = str(Path(__file__).parent / "tiny_train.py")
from conftest import ONE_THREAD as ENV, free_port as _free_port, run_ok as _run  # noqa: E402
LOSS_TOL = 1e-4  # the summed losses of two shards vs one batch: float32 summation order only



def _fsdp(out: Path, *extra):
    return _run([BIN / "torchrun", "--nproc_per_node", 2, "--master_port", _free_port(), SCRIPT, "--out", out,
                 "--batch-size", 4, "--epochs", 1, "--fsdp", "--save-every", 3, "--keep-checkpoints", *extra])


def _close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4)


def test_fsdp_shards_matches_one_process_resumes_and_saves_plain_safetensors(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, SCRIPT, "--out", one, "--batch-size", 8, "--epochs", 1, "--save-every", 0])
    _fsdp(two)
    # during training each process held half of every layer's weight, as a DTensor
    for rank in (0, 1):
        shard = json.loads((two / f"shards-rank{rank}.json").read_text())
        assert shard["type"] == "DTensor" and shard["model"].startswith("FSDP"), shard
        assert shard["shape"] == [64, 64] and shard["local_shape"] == [32, 64], shard
    assert json.loads((one / "shards-rank0.json").read_text())["type"] == "Parameter"
    a, b = (json.loads((d / "stats.json").read_text()) for d in (one, two))
    assert a["steps"] == b["steps"] == 6
    assert [s for s, _ in a["train"]] == [s for s, _ in b["train"]]
    for (_, la), (_, lb) in zip(a["train"], b["train"]): assert la == pytest.approx(lb, abs=LOSS_TOL)
    _close(torch.load(one / "final.pt"), torch.load(two / "final.pt"))
    # the saved model: one plain safetensors file, the same weights a single process saves
    assert sorted(p.name for p in (two / "model").glob("*.safetensors")) == ["model.safetensors"]
    _close(load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors"))
    # FSDP's checkpoints: sharded optimizer state in its own format, the weights as plain safetensors
    ckpt = two / "checkpoints" / "checkpoint-3"
    assert (ckpt / "optimizer.bin").is_file() and (ckpt / "model.safetensors").is_file()
    saved = load_file(two / "checkpoints" / "checkpoint-6" / "model.safetensors")
    torch.testing.assert_close(saved.pop("lm_head.weight"), saved["model.embed_tokens.weight"])  # tied: stored twice
    start = torch.load(two / "start.pt")  # the saved model: the last step's weights blended toward the start
    blended = {k: start[k] + 0.85 * (w - start[k]) for k, w in saved.items()}
    _close(blended, load_file(two / "model" / "model.safetensors"))
    # kill after step 3 (its later checkpoint lost), resume under FSDP: the same final weights
    shutil.rmtree(two / "checkpoints" / "checkpoint-6")
    again = tmp_path / "again"; shutil.copytree(two / "checkpoints", again / "checkpoints")
    _fsdp(again, "--resume")
    assert json.loads((again / "stats.json").read_text())["resumed_from"] == 3
    _close(torch.load(two / "final.pt"), torch.load(again / "final.pt"))


def test_cli_run_with_fsdp_on_two_processes(tmp_path):
    "`gpt-finetune run --fsdp` under torchrun: trains sharded, then the main process evaluates and saves as usual."
    from gpt_finetune.model import tiny_model
    model, tok = tiny_model("llama")
    tiny_dir = tmp_path / "llama"; model.save_pretrained(tiny_dir); tok.save_pretrained(tiny_dir)
    data, out = tmp_path / "pairs.json", tmp_path / "out"
    data.write_text(json.dumps([{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(40)]))
    _run([BIN / "torchrun", "--nproc_per_node", 2, "--master_port", _free_port(), "--no-python",
          BIN / "gpt-finetune", "run", "--fsdp", "--data", data, "--model", tiny_dir, "--output-dir", out,
          "--epochs", 2, "--batch-size", 4, "--learning-rate", 3e-3, "--eval-every", 2, "--save-every", 0,
          "--max-new-tokens", 4, "--precision", "fp32"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["finetuned"]["eval_loss"] < m["base"]["eval_loss"]
    saved = load_file(out / "model" / "model.safetensors")
    assert saved["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)  # full weights, not a shard
