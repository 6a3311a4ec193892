"""Training speed: the seed recipe vs TRL's SFTTrainer vs gpt_finetune's default, in one run.

    .venv/bin/python benchmarks/train_speed.py            # full run (several minutes of CPU)
    .venv/bin/python benchmarks/train_speed.py --quick    # a few steps per setup, to check that it works
    make bench                                            # installs benchmarks/requirements.txt (TRL) first

Every setup trains the same default model (SmolLM2-135M-Instruct) on the same examples (the main job's
training split of the bundled chatterbot sample, rendered with the same chat template), batch 8,
lr 5e-5, one epoch, and is then scored the same way: cross-entropy on the answer tokens (answer +
end-of-turn token) of the validation split, in float32. Each setup runs in its own subprocess, so its
peak RSS is its own. Throughput counts the same tokens for every setup (the non-pad tokens of the
data, and its answer tokens), divided by the seconds `trainer.train()` took.

MFU = model FLOP/s / the bf16 matmul peak this script measures with a large matrix product, where model
FLOPs = 6 x parameters x tokens + 6 x layers x hidden x sum(example length^2) (causal attention,
forward and backward). The 6 x parameters term counts the 49k-vocabulary output layer at every
position, as the usual MFU convention does, although gpt_finetune computes it at answer positions only.
"""
from __future__ import annotations
import argparse, json, math, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

SETUPS = {
    "seed": "(a) seed recipe: Trainer + DataCollatorForLanguageModeling, fp32, padded",
    "trl_packing": "(b) TRL SFTTrainer, packing (bfd), bf16",
    "trl_padding_free": "(b) TRL SFTTrainer, padding_free, bf16",
    "gpt_finetune": "(c) gpt_finetune finetune() defaults",
}
# Raise glibc's mmap and trim thresholds: big activation buffers are reused from the heap instead of
# being mapped and unmapped every step (FACTS.md: 6-14x fewer page faults). Same for every setup.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
BATCH, LR, EPOCHS = 8, 5e-5, 1


def data(quick: bool):
    "The main job's train/validation records, and the default model's folder."
    from gpt_finetune.data import load_pairs, default_data_path, clean_records, split_records
    from gpt_finetune.model import fetch_default_model
    kept, _ = clean_records(load_pairs(default_data_path()))
    splits = split_records(kept, 0.1, 0.1, 42)
    train, valid = splits["train"], splits["validation"]
    if quick: train, valid = train[:16], valid[:8]
    return train, valid, fetch_default_model()


def answer_valid_loss(model, valid_ds) -> float:
    "Float32 cross-entropy over the validation answer tokens, scored identically for every setup."
    import torch
    from gpt_finetune.data import PackedCollator
    from gpt_finetune.train import answer_loss_sum
    model.eval(); model.float()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(valid_ds), BATCH):
            batch = PackedCollator()([valid_ds[j] for j in range(i, min(i + BATCH, len(valid_ds)))])
            s, k, _ = answer_loss_sum(model, batch)
            total, n = total + s.item(), n + k
    return total / n


def run_setup(name: str, quick: bool) -> dict:
    "Train one setup in this process; returns its figures."
    import torch
    from transformers import Trainer, TrainingArguments, DataCollatorForLanguageModeling
    from datasets import Dataset
    from gpt_finetune.data import prompt_text, completion_text, tokenize_records
    from gpt_finetune.model import load_model, quiet_progress_bars
    quiet_progress_bars()
    train, valid, path = data(quick)
    model, tok = load_model(path)
    ours, valid_ds = tokenize_records(train, tok), tokenize_records(valid, tok)
    out = tempfile.mkdtemp(prefix=f"bench-{name}-")
    common = dict(output_dir=out, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=LR,
                  use_cpu=True, report_to="none", save_strategy="no", logging_steps=10, seed=42, disable_tqdm=True)
    if name == "seed":
        texts = [prompt_text(tok, r["input"]) + completion_text(tok, r["input"], r["output"]) for r in train]
        ds = Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"], add_special_tokens=False), batched=True,
                                                    remove_columns=["text"])
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=ds,
                          data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    elif name.startswith("trl"):
        from trl import SFTConfig, SFTTrainer
        ds = Dataset.from_list([{"prompt": prompt_text(tok, r["input"]), "completion": completion_text(tok, r["input"], r["output"])}
                                for r in train])
        extra = (dict(padding_free=True, max_length=None) if name == "trl_padding_free"
                 else dict(packing=True, packing_strategy="bfd", max_length=1024))
        trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=ds,
                             args=SFTConfig(**common, bf16=True, **extra))
    elif name == "gpt_finetune":
        from gpt_finetune.train import TrainConfig, finetune
        cfg = TrainConfig(output_dir=out, epochs=EPOCHS, eval_every=0, log_every=10)
        stats = finetune(model, tok, ours, None, cfg)
        seconds = stats["runtime_s"]
    else: raise SystemExit(f"unknown setup {name!r}; one of {', '.join(SETUPS)}")
    if name != "gpt_finetune":
        start = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - start
    lengths = ours["length"]
    c = model.config
    return {"setup": name, "train_s": seconds, "tokens": int(sum(lengths)),
            "answer_tokens": int(sum(sum(l != -100 for l in ls) for ls in ours["labels"])),
            "attn_len2": int(sum(n * n for n in lengths)), "params": model.num_parameters(),
            "layers": c.num_hidden_layers, "hidden": c.hidden_size,
            "valid_loss": answer_valid_loss(model, valid_ds),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_peak(quick: bool) -> float:
    "Best bf16 FLOP/s of a large matrix product on this machine."
    import torch
    n = 2048 if quick else 4096
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(3 if quick else 8):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def table(rows: list[dict], peak: float) -> str:
    "The results as a markdown table, with speed-ups over the seed recipe."
    base = next((r for r in rows if r["setup"] == "seed"), rows[0])
    lines = ["| setup | answer tok/s | total tok/s | train s | valid loss (answer) | peak RSS | MFU | vs (a) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flops = 6 * r["params"] * r["tokens"] + 6 * r["layers"] * r["hidden"] * r["attn_len2"]
        lines.append(f"| {SETUPS[r['setup']]} | {r['answer_tokens'] / r['train_s']:.0f} | {r['tokens'] / r['train_s']:.0f} "
                     f"| {r['train_s']:.0f} | {r['valid_loss']:.2f} | {r['peak_rss_mb'] / 1024:.1f} GB "
                     f"| {100 * flops / r['train_s'] / peak:.0f} % | {base['train_s'] / r['train_s']:.2f}x |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 training pairs: checks that every setup runs")
    p.add_argument("--setups", default="seed,trl_padding_free,gpt_finetune",
                   help="comma-separated, from " + ", ".join(SETUPS) + " (trl_packing: TRL's packing into 1,024-token rows, "
                        "slower than its padding_free here, so left out by default)")
    p.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's malloc thresholds at their defaults")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_setup(args.child, args.quick)), flush=True)
        return
    import torch
    train, valid, _ = data(args.quick)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if not args.no_malloc_tuning: env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    peak = matmul_peak(args.quick)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"{len(train)} training pairs, {len(valid)} validation pairs, batch {BATCH}, lr {LR}, {EPOCHS} epoch"
          f"{'; GLIBC_TUNABLES=' + env['GLIBC_TUNABLES'] if 'GLIBC_TUNABLES' in env else ''}", flush=True)
    rows, start = [], time.perf_counter()
    for name in args.setups.split(","):
        cmd = [sys.executable, __file__, "--child", name] + (["--quick"] if args.quick else [])
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
        if res.returncode or not found:
            print(f"# {name} failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        rows.append(json.loads(found[-1][7:]))
        print(f"# {name}: {rows[-1]['train_s']:.0f} s", flush=True)
    print(table(rows, peak))
    print(f"# benchmark wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__": main()
