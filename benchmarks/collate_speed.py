"""Packing vs length-grouped (bucketed) padded batches: which trains faster on the default data and model?
Runs the same training examples (the default job's train split, batch size 8) as forward + backward steps
with bf16 autocast on the CPU, through the training loss `gpt_finetune.train.answer_loss_sum`, and prints
real (non-pad) tokens per second for each way of batching.

    .venv/bin/python benchmarks/collate_speed.py [--steps 12] [--batch-size 8]
"""
import argparse, random, time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    from gpt_finetune.job import load_data, tokenize_splits
    from gpt_finetune.options import RunConfig
    from gpt_finetune.data import PackedCollator, PaddedCollator, length_grouped_batches
    from gpt_finetune.model import load_model, quiet_progress_bars
    from gpt_finetune.train import answer_loss_sum
    quiet_progress_bars()
    cfg = RunConfig()
    model, tok = load_model()
    splits, dss, _, _ = tokenize_splits(cfg, *load_data(cfg), tok)
    ds = dss["train"]
    lengths, n, bs = ds["length"], args.steps * args.batch_size, args.batch_size
    order = list(range(len(ds))); random.Random(0).shuffle(order)
    ways = {"packed (one row, positions restart)": ([order[i:i + bs] for i in range(0, n, bs)], PackedCollator()),
            "bucketed, padded (length-grouped)": (length_grouped_batches(lengths, bs, seed=0)[:args.steps],
                                                  PaddedCollator(tok.pad_token_id)),
            "random, padded": ([order[i:i + bs] for i in range(0, n, bs)], PaddedCollator(tok.pad_token_id))}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    def step(idx, collate):
        batch = collate([ds[i] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, count, _ = answer_loss_sum(model, batch)
        (loss / count).backward(); opt.step(); opt.zero_grad()
        return batch["input_ids"].numel()
    for batches, collate in ways.values(): step(batches[0], collate)  # warm-up
    secs, tokens, padded = {k: 0.0 for k in ways}, {k: 0 for k in ways}, {k: 0 for k in ways}
    for b in range(args.steps):  # round robin, so a busy machine slows every way alike
        for name, (batches, collate) in ways.items():
            t = time.perf_counter()
            padded[name] += step(batches[b], collate)
            secs[name] += time.perf_counter() - t
            tokens[name] += sum(lengths[i] for i in batches[b])
    for name in ways:
        print(f"{name:38s} {tokens[name] / secs[name]:6.0f} tokens/s  ({secs[name]:.1f} s, {args.steps} batches, "
              f"{padded[name] - tokens[name]} pad tokens)", flush=True)

if __name__ == "__main__":
    main()
