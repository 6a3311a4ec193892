"""Where a gpt_finetune training step spends its time: torch.profiler over a few steps of the default model.

    .venv/bin/python benchmarks/train_profile.py [--steps 6] [--optim fused|foreach]

Runs what `finetune()` runs per step (a packed row of 8 examples, bf16 autocast on CPU, answer-only
logits, AdamW) without the Trainer around it, and prints the share of forward, backward and optimizer
time, then the most expensive operators.
"""
from __future__ import annotations
import argparse, time

import torch
from torch.profiler import ProfilerActivity, profile, record_function


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--optim", choices=["fused", "foreach"], default="fused")
    args = p.parse_args()
    from gpt_finetune.data import PackedCollator, load_pairs, default_data_path, clean_records, split_records, tokenize_records
    from gpt_finetune.model import fetch_default_model, load_model, quiet_progress_bars
    from gpt_finetune.train import answer_loss_sum
    quiet_progress_bars()
    model, tok = load_model(fetch_default_model())
    kept, _ = clean_records(load_pairs(default_data_path()))
    ds = tokenize_records(split_records(kept, 0.1, 0.1, 42)["train"][: 8 * (args.steps + 1)], tok)
    batches = [PackedCollator()([ds[j] for j in range(i, i + 8)]) for i in range(0, len(ds), 8)]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, **{args.optim: True})
    model.train()

    def step(b):
        with record_function("forward"), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n, _ = answer_loss_sum(model, b)
        with record_function("backward"): (loss / n).backward()
        with record_function("optimizer"): opt.step(); opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up: first-touch allocations, oneDNN kernel selection
    tokens = sum(b["input_ids"].shape[1] for b in batches[1:])
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:]: step(b)
    seconds = time.perf_counter() - start
    print(f"{args.steps} steps, {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s, profiler on), optimizer {args.optim}")
    ev = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in ("forward", "backward", "optimizer")}
    total = sum(ev.values())
    print(" | ".join(f"{k} {100 * v / total:.0f} %" for k, v in ev.items()))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__": main()
