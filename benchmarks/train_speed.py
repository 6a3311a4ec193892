"""Training speed: the seed recipe vs TRL's SFTTrainer vs gpt_finetune's default, in one run.

    .venv/bin/python benchmarks/train_speed.py            # full run: ~6 minutes on a quiet 2-core CPU
    .venv/bin/python benchmarks/train_speed.py --quick    # 16 pairs per setup: checks that everything runs
    make bench                                            # installs benchmarks/requirements.txt (TRL) first
    .venv/bin/python benchmarks/train_speed.py --setups gpt_finetune --model Qwen/Qwen2.5-0.5B-Instruct  # on a GPU

Every setup trains the same model (default: SmolLM2-135M-Instruct) on the same examples (the main job's
training split of the bundled chatterbot sample, rendered with the same chat template), batch 8, lr 5e-5,
one epoch, and is then scored the same way: cross-entropy on the answer tokens (answer + end-of-turn token)
of the validation split, in float32. Each setup runs in its own subprocess, so its peak RSS is its own, and
the same glibc malloc thresholds apply to all. Throughput counts the same tokens for every setup (the
non-pad tokens of the data, and its answer tokens), divided by the seconds `trainer.train()` took.

The script measures both matmul peaks of the machine (bf16 and fp32, a large matrix product). MFU counts
the FLOPs of the work the task needs, whatever a setup actually computes:
    6 x (parameters outside the embedding and output layer) x tokens      (forward + backward)
  + 6 x (output-layer parameters) x answer tokens                          (logits only where there is a loss)
  + 6 x layers x hidden x sum(example length^2)                            (causal attention)
and divides them by the seconds and the bf16 peak. Results go to benchmarks/results/train_speed.txt and,
machine-readable (rows and a rendered markdown table), train_speed.json.
"""
from __future__ import annotations
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

SETUPS = {
    "seed": "(a) seed recipe: Trainer + DataCollatorForLanguageModeling, fp32, padded",
    "trl_packing": "(b) TRL SFTTrainer, packing (bfd), bf16",
    "trl_padding_free": "(b) TRL SFTTrainer, padding_free, bf16 (its fastest here)",
    "gpt_finetune": "(c) gpt_finetune finetune() defaults",
}
# Raise glibc's mmap and trim thresholds: big activation buffers are reused from the heap instead of
# being mapped and unmapped every step (6-14x fewer page faults). Same for every setup.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"
BATCH, LR, EPOCHS = 8, 5e-5, 1
RESULTS = Path(__file__).resolve().parent / "results"
ASSET = Path(__file__).resolve().parent.parent / "gpt_finetune" / "assets" / "train_speed.json"


def data(quick: bool):
    "The main job's train/validation records."
    from gpt_finetune.clean import clean_dataset
    from gpt_finetune.data import default_data_path, split_records
    from gpt_finetune.formats import load_records
    kept, _ = clean_dataset(load_records(default_data_path()).records)
    splits = split_records(kept, 0.1, 0.1, 42)
    train, valid = splits["train"], splits["validation"]
    return (train[:16], valid[:8]) if quick else (train, valid)


def answer_valid_loss(model, valid_ds, device: str) -> float:
    "Float32 cross-entropy over the validation answer tokens, scored identically for every setup."
    import torch
    from gpt_finetune.data import PackedCollator
    from gpt_finetune.train import answer_loss_sum
    model.eval(); model.float()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(valid_ds), BATCH):
            batch = PackedCollator()([valid_ds[j] for j in range(i, min(i + BATCH, len(valid_ds)))])
            s, k, _ = answer_loss_sum(model, {k: v.to(device) for k, v in batch.items()})
            total, n = total + s.item(), n + k
    return total / n


def flops_needed(model, tokens: int, answer_tokens: int, attn_len2: int) -> float:
    "Training FLOPs of the needed work: body at every token, output layer at answer tokens, causal attention."
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body = model.num_parameters() - emb.numel() - (0 if head is emb or head.data_ptr() == emb.data_ptr()
                                                   else head.numel())
    c = model.config
    return 6 * body * tokens + 6 * head.numel() * answer_tokens + 6 * c.num_hidden_layers * c.hidden_size * attn_len2


def peak_memory(device: str) -> float:
    "Peak resident memory of this process in bytes (GPU memory on CUDA)."
    import torch
    if device == "cuda": return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trainer(name: str, model, tok, train, out: str, device: str):
    "The Trainer of setup `name` (the seed recipe or TRL), not yet trained."
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
    from gpt_finetune.data import completion_text, prompt_text
    common = dict(output_dir=out, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=LR,
                  use_cpu=device == "cpu", report_to="none", save_strategy="no", logging_steps=10, seed=42,
                  disable_tqdm=True)
    if name == "seed":
        texts = [prompt_text(tok, r["input"]) + completion_text(tok, r["input"], r["output"]) for r in train]
        ds = Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"], add_special_tokens=False), batched=True,
                                                    remove_columns=["text"])
        return Trainer(model=model, args=TrainingArguments(**common), train_dataset=ds,
                       data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    from trl import SFTConfig, SFTTrainer
    ds = Dataset.from_list([{"prompt": prompt_text(tok, r["input"]),
                             "completion": completion_text(tok, r["input"], r["output"])}
                            for r in train])
    extra = (dict(padding_free=True, max_length=None) if name == "trl_padding_free"
             else dict(packing=True, packing_strategy="bfd", max_length=1024))
    return SFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=SFTConfig(**common, bf16=True, **extra))


def run_setup(name: str, quick: bool, model_name: str | None) -> dict:
    "Train one setup in this process; returns its figures."
    from gpt_finetune.data import tokenize_records
    from gpt_finetune.model import best_device, load_model, quiet_progress_bars
    quiet_progress_bars()
    if name not in SETUPS: raise SystemExit(f"unknown setup {name!r}; one of {', '.join(SETUPS)}")
    train, valid = data(quick)
    device = best_device()
    model, tok = load_model(model_name)
    if device != "cpu": model.to(device)
    ours, valid_ds = tokenize_records(train, tok), tokenize_records(valid, tok)
    out = tempfile.mkdtemp(prefix=f"bench-{name}-")
    if name == "gpt_finetune":
        from gpt_finetune.options import TrainConfig
        from gpt_finetune.train import finetune
        stats = finetune(model, tok, ours, None, TrainConfig(output_dir=out, epochs=EPOCHS, eval_every=0, log_every=10,
                                                             batch_size=BATCH, learning_rate=LR, progress=False))
        seconds = stats["runtime_s"]
    else:
        trainer = _trainer(name, model, tok, train, out, device)
        start = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - start
    lengths = ours["length"]
    answer = int(sum(sum(l != -100 for l in ls) for ls in ours["labels"]))
    attn = int(sum(n * n for n in lengths))
    return {"setup": name, "label": SETUPS[name], "train_s": round(seconds, 2), "tokens": int(sum(lengths)),
            "answer_tokens": answer, "flops": flops_needed(model, int(sum(lengths)), answer, attn),
            "valid_loss": round(answer_valid_loss(model, valid_ds, device), 4),
            "peak_mem_gb": round(peak_memory(device) / 2**30, 2)}


def matmul_peak(dtype_name: str, quick: bool, device: str) -> float:
    "Best FLOP/s of a large matrix product in `dtype_name` on this machine."
    import torch
    dtype = getattr(torch, dtype_name)
    n = 8192 if device == "cuda" else (2048 if quick else 4096)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b; sync()
    best = float("inf")
    for _ in range(3 if quick else 8):
        t = time.perf_counter(); a @ b; sync(); best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def with_ratios(rows: list[dict], peak: float) -> list[dict]:
    "Each row with its throughputs, MFU against the bf16 peak, and speed-ups over the seed recipe and TRL."
    base = next((r for r in rows if r["setup"] == "seed"), None)
    trl = max((r for r in rows if r["setup"].startswith("trl")), key=lambda r: r["answer_tokens"] / r["train_s"],
              default=None)
    for r in rows:
        r["answer_tok_s"], r["tok_s"] = (round(r["answer_tokens"] / r["train_s"], 1),
                                         round(r["tokens"] / r["train_s"], 1))
        r["mfu"] = round(r["flops"] / r["train_s"] / peak, 4)
        r["vs_seed"] = round(base["train_s"] / r["train_s"], 2) if base else None
        r["vs_trl"] = round(trl["train_s"] / r["train_s"], 2) if trl else None
    return rows


def table(rows: list[dict]) -> str:
    "The results as a markdown table."
    lines = ["| setup | answer tok/s | total tok/s | train s | valid loss (answer) | peak memory | MFU | vs (a) "
             "| vs (b) |",
             "|---|---|---|---|---|---|---|---|---|"]
    x = lambda v: f"{v:.2f}x" if v is not None else "–"
    for r in rows:
        lines.append(f"| {r['label']} | {r['answer_tok_s']:.0f} | {r['tok_s']:.0f} | {r['train_s']:.0f} "
                     f"| {r['valid_loss']:.2f} | {r['peak_mem_gb']:.1f} GB | {100 * r['mfu']:.0f} % "
                     f"| {x(r['vs_seed'])} | {x(r['vs_trl'])} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 training pairs: checks that every setup runs")
    p.add_argument("--setups", default="seed,trl_padding_free,gpt_finetune",
                   help="comma-separated, from " + ", ".join(SETUPS) + " (trl_packing: TRL's packing into "
                        "1,024-token rows, slower than its padding_free here, so left out by default)")
    p.add_argument("--model", default=None, help="Hub id or folder (default: the default model)")
    p.add_argument("--out", default=None,
                   help="folder for train_speed.txt and train_speed.json (default: benchmarks/results, "
                        "except with --quick; '': write nothing)")
    p.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's malloc thresholds at their defaults")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_setup(args.child, args.quick, args.model)), flush=True)
        return
    import torch
    from gpt_finetune.model import best_device
    device = best_device()
    train, valid = data(args.quick)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if not args.no_malloc_tuning: env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    peaks = {d: matmul_peak(d, args.quick, device) for d in ("bfloat16", "float32")}
    gpu = (torch.cuda.get_device_name() if device == "cuda"
           else f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} threads")
    head = (f"# torch {torch.__version__}, {gpu}; matmul peak bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 "
            f"{peaks['float32'] / 1e9:.0f} GFLOP/s (ratio {peaks['bfloat16'] / peaks['float32']:.1f}); model "
            f"{args.model or 'default (SmolLM2-135M-Instruct)'}; {len(train)} training pairs, "
            f"{len(valid)} validation pairs, batch {BATCH}, lr {LR}, {EPOCHS} epoch"
            f"{'; GLIBC_TUNABLES=' + env['GLIBC_TUNABLES'] if 'GLIBC_TUNABLES' in env else ''}")
    print(head, flush=True)
    rows, start, log = [], time.perf_counter(), [head]
    for name in args.setups.split(","):
        cmd = ([sys.executable, __file__, "--child", name] + (["--quick"] if args.quick else [])
               + (["--model", args.model] if args.model else []))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
        if res.returncode or not found:
            log.append(f"# {name} failed (exit {res.returncode}): "
                       f"{res.stderr.strip().splitlines()[-1:]}"); print(log[-1], flush=True)
            continue
        rows.append(json.loads(found[-1][7:]))
        log.append(f"# {name}: {rows[-1]['train_s']:.0f} s"); print(log[-1], flush=True)
    rows = with_ratios(rows, peaks["bfloat16"])
    md = table(rows)
    wall = time.perf_counter() - start
    print(md); print(f"# benchmark wall time {wall:.0f} s")
    out = args.out if args.out is not None else ("" if args.quick else str(RESULTS))
    if out:
        out = Path(out).resolve(); out.mkdir(parents=True, exist_ok=True)
        (out / "train_speed.txt").write_text("\n".join(log + [md, f"# benchmark wall time {wall:.0f} s"]) + "\n")
        (out / "train_speed.json").write_text(json.dumps(
            {"command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
             "device": gpu, "peak_bf16_flops": peaks["bfloat16"], "peak_fp32_flops": peaks["float32"],
             "model": args.model or "default",
             "train_pairs": len(train), "valid_pairs": len(valid), "batch": BATCH, "lr": LR, "epochs": EPOCHS,
             "wall_s": round(wall), "rows": rows, "markdown": md}, indent=1) + "\n")
        if out == RESULTS:  # the lesson 02_train and README render the table from the package's copy
            shutil.copyfile(out / "train_speed.json", ASSET)


if __name__ == "__main__": main()
