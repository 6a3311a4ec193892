"""Evaluation's answer generation before and after the generation core, in generated tokens/s, in one run.

    .venv/bin/python benchmarks/generate_speed.py                          # 400 questions, 64 new tokens at most
    .venv/bin/python benchmarks/generate_speed.py --questions 64 --chunk 32  # a quick check

Both paths answer the same questions of the bundled data with the default model (SmolLM2-135M-Instruct),
greedy, stopping at the end-of-turn token, from the same rendered prompts:

- before: a faithful copy of the loop evaluation used until now (`generate_texts` at commit 2af4c4b):
  prompts sorted by length in characters, batches of 16 left-padded by the tokenizer, `model.generate`
  for each batch, which runs until every row has stopped while finished rows keep computing;
- after: `gpt_finetune.generation.generate_texts` with its defaults: prompts sorted by length in tokens,
  cut into even batches of at most 64, `generate_ids`, which reads the prefix all prompts of a batch share (the
  chat template's system prompt) once, and drops each finished row from the batch and its key/value cache.

Generated tokens are the answer tokens up to (not including) the stop token, counted the same way for
both. The host is shared and noisy, so the questions are cut into chunks and the two paths take turns
on each chunk (before/after, then after/before), and the ratio compares the summed times. Besides
wall-clock seconds the script reports the CPU seconds the process spent, which other processes on a
shared host disturb much less. The results
are written to benchmarks/results/generate_speed.txt.
"""
from __future__ import annotations
import argparse, platform, time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt_finetune.data import default_data_path, prompt_text, stop_token_ids
from gpt_finetune.generation import generate_texts
from gpt_finetune.formats import load_records
from gpt_finetune.model import load_model, quiet_progress_bars

RESULTS = Path(__file__).parent / "results" / "generate_speed.txt"


@torch.no_grad()
def old_generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
                       progress: bool = False, **gen_kwargs) -> list[dict]:
    "The loop evaluation used before the generation core (commit 2af4c4b), unchanged."
    stops = stop_token_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results, side = [None] * len(prompts), tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generating", disable=not progress):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=tokenizer.chat_template is None).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, **{"do_sample": False, **gen_kwargs})
            for i, row, n in zip(idx, out[:, enc.input_ids.shape[1]:].tolist(), enc.attention_mask.sum(1).tolist()):
                end = next((k for k, t in enumerate(row) if t in stops), None)
                answer = row[:end] if end is not None else row
                results[i] = {"text": tokenizer.decode(answer, skip_special_tokens=True), "stopped": end is not None,
                              "tokens": len(answer), "prompt_tokens": n}
    finally: tokenizer.padding_side = side
    return results


def timed(fn):
    "`fn()`, its wall-clock seconds, and the CPU seconds this process spent on it (steadier on a shared host)."
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=400, help="questions of the bundled data (its first N)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="evaluation's default answer limit")
    p.add_argument("--chunk", type=int, default=100, help="questions per turn; the paths alternate on each chunk")
    p.add_argument("--before-batch-size", type=int, default=16,
                   help="the old loop's batch size (evaluation's default then)")
    p.add_argument("--after-batch-size", type=int, default=None, help="default: generate_texts' own default")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    quiet_progress_bars()
    (model, tok), load_s, _ = timed(lambda: load_model())
    records = load_records(default_data_path()).records[:args.questions]
    prompts = [prompt_text(tok, r["input"]) for r in records]
    after_kw = {} if args.after_batch_size is None else {"batch_size": args.after_batch_size}
    run = {"before": lambda ps: old_generate_texts(model, tok, ps, args.max_new_tokens, args.before_batch_size),
           "after": lambda ps: generate_texts(model, tok, ps, args.max_new_tokens, **after_kw)}
    count = {"before": lambda o: o["tokens"], "after": lambda o: o["completion_tokens"]}
    for f in run.values(): f(prompts[:2])  # warm-up: first-call allocations
    secs, cpus, outs = {"before": 0.0, "after": 0.0}, {"before": 0.0, "after": 0.0}, {"before": [], "after": []}
    chunks = [prompts[i:i + args.chunk] for i in range(0, len(prompts), args.chunk)]
    for k, chunk in enumerate(chunks):
        for name in (("before", "after") if k % 2 == 0 else ("after", "before")):
            o, s, c = timed(lambda: run[name](chunk))
            outs[name] += o; secs[name] += s; cpus[name] += c
            print(f"chunk {k + 1}/{len(chunks)} {name:<6} {sum(map(count[name], o)):>6} tokens {s:>7.1f} s "
                  f"{c:>7.1f} CPU s", flush=True)
    rate = {n: sum(map(count[n], outs[n])) / secs[n] for n in secs}
    cpu_rate = {n: sum(map(count[n], outs[n])) / cpus[n] for n in secs}
    same = sum(a["text"] == b["text"] for a, b in zip(outs["before"], outs["after"]))
    lines = [f"model: default (SmolLM2-135M-Instruct), loaded in {load_s:.1f} s; {len(prompts)} questions of the "
             f"bundled data, greedy, at most {args.max_new_tokens} new tokens; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {platform.machine()}",
             f"questions in chunks of {args.chunk}, the two paths alternating on each chunk",
             f"{'path':<58}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'CPU s':>8}{'tokens/CPU s':>14}"]
    names = {"before": f"before: old loop, model.generate, batches of {args.before_batch_size}",
             "after": f"after: generate_texts (generate_ids), batches of {after_kw.get('batch_size', 'default')}"}
    for n in ("before", "after"):
        lines.append(f"{names[n]:<58}{sum(map(count[n], outs[n])):>8}{secs[n]:>9.1f}{rate[n]:>10.1f}"
                     f"{cpus[n]:>8.1f}{cpu_rate[n]:>14.1f}")
    lines.append(f"speedup (generated tokens/s, after / before): {rate['after'] / rate['before']:.2f}x wall-clock, "
                 f"{cpu_rate['after'] / cpu_rate['before']:.2f}x per CPU second; "
                 f"identical answers: {same}/{len(prompts)}")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
