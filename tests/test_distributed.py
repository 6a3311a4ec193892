"""Two CPU processes (gloo) through the real launchers: the loss curve of 2 x batch 4 (accelerate, with the lesson's
`ddp_cpu.yaml`) equals 1 x batch 8, and `gpt-finetune run` under torchrun writes its outputs once, from rank 0.
The accelerate configurations in `configs/` are the ones `scale.accelerate_config` writes."""
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest
import torch
import yaml

from gpt_finetune.scale import ACCELERATE_CONFIGS, accelerate_config

BIN = Path(sys.executable).parent
SCRIPT = str(Path(__file__).parent / "tiny_train.py")
CONFIGS = Path(__file__).parent.parent / "configs"
from conftest import ONE_THREAD as ENV, free_port as _free_port, run_ok as _run  # noqa: E402



def _steps(path: Path) -> dict:
    return {s["step"]: s["ids"] for s in map(json.loads, path.read_text().splitlines())}


def test_configs_folder_holds_the_lessons_accelerate_configs():
    for kind, text in ACCELERATE_CONFIGS.items():
        assert (CONFIGS / f"{kind}.yaml").read_text() == text, f"configs/{kind}.yaml differs from the lesson's"
        assert yaml.safe_load(text)["num_processes"] == 2


def test_shipped_sharding_configs_load_through_accelerate():
    "DeepSpeed cannot run here (see 02b_scale): the ZeRO-3 file is checked as far as accelerate takes it."
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType
    ds3, fsdp = (load_config_from_file(str(CONFIGS / f"{k}.yaml")) for k in ("deepspeed_zero3", "fsdp"))
    assert (ds3.distributed_type, fsdp.distributed_type) == (DistributedType.DEEPSPEED, DistributedType.FSDP)
    zero = DeepSpeedPlugin(**ds3.deepspeed_config).hf_ds_config.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--epochs", 1, "--save-every", 0]
    _run([sys.executable, SCRIPT, "--out", one, "--batch-size", 8, *args])
    # accelerate's multi-GPU mode on a CPU machine: two gloo processes (`--cpu --num_processes 2` would start one)
    config = accelerate_config("ddp_cpu", tmp_path)
    _run([BIN / "accelerate", "launch", "--config_file", config, "--main_process_port", _free_port(), SCRIPT,
          "--out", two, "--batch-size", 4, *args])
    a, b = (json.loads((d / "stats.json").read_text()) for d in (one, two))
    assert a["steps"] == b["steps"] == 6
    assert [s for s, _ in a["train"]] == [s for s, _ in b["train"]]
    for (_, la), (_, lb) in zip(a["train"], b["train"]): assert la == pytest.approx(lb, abs=1e-4)
    wa, wb = torch.load(one / "final.pt"), torch.load(two / "final.pt")
    for k in wa: torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    # each step, the two ranks together trained on exactly the single process's batch
    single, r0, r1 = (_steps(one / "steps-rank0.jsonl"), _steps(two / "steps-rank0.jsonl"),
                      _steps(two / "steps-rank1.jsonl"))
    assert all(len(r0[s]) == len(r1[s]) == 4 and sorted(r0[s] + r1[s]) == sorted(single[s]) for s in single)


# Loaded by every process through PYTHONPATH; its atexit hook, registered first, runs last: is the group still joined?
EXIT_PROBE = """import atexit, os, sys
def _joined_at_exit():
    dist = sys.modules.get("torch.distributed")
    where = os.path.join(os.environ["GF_EXIT_DIR"], "joined-at-exit-rank" + os.environ.get("RANK", "-launcher"))
    with open(where, "w") as f: f.write(str(bool(dist and dist.is_available() and dist.is_initialized())))
atexit.register(_joined_at_exit)
"""


def test_cli_under_torchrun_writes_once_from_rank_0(tmp_path):
    from gpt_finetune.model import tiny_model
    site = tmp_path / "site"; site.mkdir(); (site / "sitecustomize.py").write_text(EXIT_PROBE)
    model, tok = tiny_model("llama")
    tiny_dir = tmp_path / "llama"; model.save_pretrained(tiny_dir); tok.save_pretrained(tiny_dir)
    data, out = tmp_path / "pairs.json", tmp_path / "out"
    data.write_text(json.dumps([{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(40)]))
    res = _run([BIN / "torchrun", "--nproc_per_node", 2, "--master_port", _free_port(), "--no-python",
                BIN / "gpt-finetune", "run", "--data", data, "--model", tiny_dir, "--output-dir", out, "--epochs", 2,
                "--batch-size", 4, "--learning-rate", 3e-3, "--eval-every", 2, "--save-every", 4,
                "--max-new-tokens", 4, "--precision", "fp32", "--keep-checkpoints"],
               env={**ENV, "PYTHONPATH": str(site), "GF_EXIT_DIR": str(tmp_path)})
    # every process left the process group before Python shut down (else gloo's threads may abort it at exit)
    assert {p.name: p.read_text() for p in tmp_path.glob("joined-at-exit-rank[0-9]")} == {
        "joined-at-exit-rank0": "False", "joined-at-exit-rank1": "False"}
    lines = res.stdout.splitlines()
    assert sum(l.startswith("disk: ") for l in lines) == 1  # one report, from rank 0 ...
    assert sum(l.startswith("time: base evaluation") for l in lines) == 1  # ... which alone evaluated the base model
    m = json.loads((out / "metrics.json").read_text())
    rows = m["data"]["kept"]["train"] + m["data"]["replay"]["rows"]  # the user's rows and the replayed ones
    assert m["train"]["planned_steps"] == 2 * -(-rows // 8)  # global batch 2 x 4
    # both processes take the extension's decision from the same reduced validation loss, or one waits forever
    assert m["train"]["steps"] == m["train"]["planned_steps"] * (3 if m["train"]["extended"] else 2) // 2
    assert m["finetuned"]["eval_loss"] < m["base"]["eval_loss"]
    assert len((out / "answers.jsonl").read_text().splitlines()) == m["data"]["kept"]["test"]
    assert (out / "model" / "model.safetensors").exists() and (out / "loss.png").exists()
    last = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    # each rank's RNG, one copy of the rest
    assert {p.name for p in last.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
