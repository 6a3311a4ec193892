"""Where a gpt_finetune training step spends its time, and which levers change it: setups side by side in one run.

    .venv/bin/python benchmarks/train_profile.py [--steps 4] [--setups autocast,bf16_master,batch16] [--profile]

Runs what `finetune()` runs per step (packed rows of the default model's training data, answer-only logits,
AdamW) without the Trainer around it, for several setups whose steps are interleaved round robin: a busy
machine slows every setup alike, so the ratios hold even when absolute times do not. Setups:

- `autocast`: float32 weights, bf16 autocast (casts every weight to bf16 on each pass), fused AdamW;
- `bf16_master`: bf16 compute weights, float32 master weights updated by fused AdamW, copied back each step;
- `bf16_sr`: bf16 weights only, AdamW with stochastic rounding of the update (no float32 copy at all);
- `batch16`: `autocast` with 16 examples per row (more tokens per optimizer step);
- `threads1`: `autocast` on one thread (what a second process per core would see).

`autocast` is what `finetune` did before; `bf16_master` is its default on CPUs now (`TrainConfig.bf16_weights`).
One run on a very busy machine (load ~14 on 2 cores, 3 measured steps each) gave bf16_master 1.13x and bf16_sr 0.93x
autocast; measure again on a quiet machine before trusting the size of the gain.

With `--profile`, torch.profiler records the first setup and prints the share of forward, backward and
optimizer time and the most expensive operators.
"""
from __future__ import annotations
import argparse, time

import torch
from torch.profiler import ProfilerActivity, profile, record_function


def batches(tok, n: int, size: int):
    "`n` packed rows of `size` examples from the main job's training split."
    from gpt_finetune.clean import clean_dataset
    from gpt_finetune.data import PackedCollator, default_data_path, split_records, tokenize_records
    from gpt_finetune.formats import load_records
    kept, _ = clean_dataset(load_records(default_data_path()).records)
    ds = tokenize_records(split_records(kept, 0.1, 0.1, 42)["train"][: size * n], tok)
    return [PackedCollator()([ds[j] for j in range(i, i + size)]) for i in range(0, size * n, size)]


class Setup:
    "One way to run a training step: its model, optimizer and per-step function."
    def __init__(self, name: str, model):
        from gpt_finetune.speed import Bf16AdamW
        from gpt_finetune.train import packed_attention
        packed_attention(model)  # as finetune() does: attention on each example of a packed row alone
        self.name, self.autocast, self.seconds, self.tokens = name, name in ("autocast", "batch16", "threads1"), 0.0, 0
        if name == "bf16_master":
            self.model, self.opt = model.to(torch.bfloat16), Bf16AdamW(model.parameters(), lr=5e-5)
        elif name == "bf16_sr":
            self.model, self.opt = model.to(torch.bfloat16), Bf16AdamW(model.parameters(), lr=5e-5,
                                                                       master_weights=False)
        else: self.model, self.opt = model, torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
        self.model.train()

    def step(self, b):
        from gpt_finetune.train import answer_loss_sum
        threads = torch.get_num_threads()
        if self.name == "threads1": torch.set_num_threads(1)
        start = time.perf_counter()
        with record_function("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss, n, _ = answer_loss_sum(self.model, b)
        with record_function("backward"): (loss / n).backward()
        with record_function("optimizer"): self.opt.step(); self.opt.zero_grad(set_to_none=True)
        self.seconds += time.perf_counter() - start
        self.tokens += b["input_ids"].shape[1]
        torch.set_num_threads(threads)
        return loss.item() / n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="measured steps per setup (after one warm-up step)")
    p.add_argument("--setups", default="autocast,bf16_master,bf16_sr,batch16")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of the first setup")
    args = p.parse_args()
    from gpt_finetune.model import fetch_default_model, load_model, quiet_progress_bars
    quiet_progress_bars()
    path = fetch_default_model()
    names = args.setups.split(",")
    setups = [Setup(n, load_model(path)[0]) for n in names]
    tok = load_model(path)[1]
    rows8, rows16 = batches(tok, 2 * (args.steps + 1), 8), batches(tok, args.steps + 1, 16)
    for s in setups: s.step((rows16 if s.name == "batch16" else rows8)[0]); s.seconds, s.tokens = 0.0, 0  # warm-up
    losses = {s.name: [] for s in setups}
    for i in range(1, args.steps + 1):  # round robin: the same machine state for every setup
        print(f"# round {i}: " + ", ".join(f"{s.name} {s.tokens / max(s.seconds, 1e-9):.0f} tok/s" for s in setups),
              flush=True)
        for s in setups:
            # batch16 sees the examples of two batch-8 rows in one row: the same tokens per measured pair of steps
            losses[s.name].append(s.step(rows16[i] if s.name == "batch16" else rows8[i]))
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} measured steps per setup, "
          "round robin")
    base = setups[0]
    for s in setups:
        print(f"{s.name:12s} {s.tokens / s.seconds:6.0f} tokens/s  {s.seconds / args.steps:5.2f} s/step  "
              f"{(s.tokens / s.seconds) / (base.tokens / base.seconds):4.2f}x {base.name}  "
              f"last loss {losses[s.name][-1]:.3f}")
    if args.profile:
        s = setups[0]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in rows8[1:3]: s.step(b)
        ev = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in ("forward", "backward", "optimizer")}
        total = sum(ev.values())
        print(" | ".join(f"{k} {100 * v / total:.0f} %" for k, v in ev.items()))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__": main()
