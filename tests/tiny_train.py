"""Train a tiny random Llama on 48 bundled pairs with `finetune`, recording which examples each optimizer step saw.

Used by test_resume.py (killed and resumed), test_distributed.py, test_fsdp.py and test_two_nodes.py (under
torchrun). Writes into --out: `steps-rank{R}.jsonl` (one line per optimizer step: step and example ids),
`shards-rank{R}.json` (what one weight looked like on this process during step 1), and on rank 0 `final.pt`
(weights), `model/` (the trained model, saved as a Hugging Face folder) and `stats.json` (loss history)."""
import argparse, json, os, time
from pathlib import Path

import torch
from transformers import TrainerCallback

from gpt_finetune.data import default_data_path, tokenize_records
from gpt_finetune.formats import load_records
from gpt_finetune.model import tiny_model
from gpt_finetune.options import TrainConfig
from gpt_finetune.scale import leave_process_group
from gpt_finetune.train import finetune


class StepLog(TrainerCallback):
    "Record the example ids of each packed training row, written per optimizer step (flushed: the run may be killed)."
    def __init__(self, model, ds, path: Path, sleep: float):
        self.index = {tuple(ids): i for i, ids in enumerate(ds["input_ids"])}
        self.seen, self.path, self.sleep = [], path, sleep
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if not module.training: return
        ids, pos = kwargs["input_ids"][0].tolist(), kwargs["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        self.seen += [self.index[tuple(ids[a:b])] for a, b in zip(starts, starts[1:])]

    def on_step_end(self, args, state, control, **kw):
        with open(self.path, "a") as f: f.write(json.dumps({"step": state.global_step, "ids": self.seen}) + "\n")
        self.seen = []
        time.sleep(self.sleep)  # slow the tiny run down so a test can kill it between checkpoints


class ShardProbe(TrainerCallback):
    "Record, after the first optimizer step, the type and this process's shape of one attention weight."
    def __init__(self, path: Path): self.path = path

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step != 1: return
        w = model.get_submodule("model.layers.0.self_attn.q_proj").weight
        local = w.to_local() if hasattr(w, "to_local") else w  # a DTensor holds only this process's shard
        self.path.write_text(json.dumps({"type": type(w).__name__, "shape": list(w.shape),
                                         "local_shape": list(local.shape), "model": type(model).__name__}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--save-every", type=int, default=4)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--keep-checkpoints", action="store_true")
    a = p.parse_args()
    out, rank = Path(a.out), int(os.environ.get("RANK", 0))
    model, tok = tiny_model("llama")
    ds = tokenize_records(load_records(default_data_path()).records[:48], tok)
    cfg = TrainConfig(output_dir=str(out / "checkpoints"), epochs=a.epochs, batch_size=a.batch_size, learning_rate=3e-3,
                      eval_every=0, log_every=1, precision="fp32", save_every=a.save_every, save_limit=3, seed=7,
                      keep_checkpoints=a.keep_checkpoints, **({"fsdp": True} if a.fsdp else {}))
    if rank == 0:  # the weights the run blends back toward at its end (`blend`)
        out.mkdir(parents=True, exist_ok=True); torch.save(model.state_dict(), out / "start.pt")
    log = StepLog(model, ds, out / f"steps-rank{rank}.jsonl", a.sleep)
    stats = finetune(model, tok, ds, None, cfg, callbacks=[log, ShardProbe(out / f"shards-rank{rank}.json")],
                     resume=a.resume)
    if rank == 0:  # finetune left a plain model with the full weights on every process, sharded or not
        torch.save(model.state_dict(), out / "final.pt")
        model.save_pretrained(out / "model")
        (out / "stats.json").write_text(json.dumps({"train": stats["history"].train, "steps": stats["steps"],
                                                    "resumed_from": stats["resumed_from"]}))
    leave_process_group()  # under torchrun: every process leaves the group before exiting, or one may abort


if __name__ == "__main__":
    main()
