"""Generated tokens/s for batched generation against one question at a time, on the default model (SmolLM2-135M).

    .venv/bin/python benchmarks/generate_speed.py                      # 32 questions, 32 new tokens, batches of 16
    .venv/bin/python benchmarks/generate_speed.py --questions 16 --batch-size 8 --threads 1

Both runs use `gpt_finetune.evaluation.generate_answers` (greedy, stopping at the end-of-turn token, KV cache);
only the batch size differs. Tokens counted are answer tokens up to the stop token, so the padding and the
steps a finished row spends waiting for the rest of its batch count against the batched run.
"""
import argparse, time

import torch

from gpt_finetune.data import default_data_path, load_pairs
from gpt_finetune.evaluation import generate_answers
from gpt_finetune.model import load_model, quiet_progress_bars


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, one per core)")
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    quiet_progress_bars()
    (model, tok), load_s = timed(lambda: load_model())
    questions = [r["input"] for r in load_pairs(default_data_path())[:args.questions]]
    generate_answers(model, tok, questions[:2], max_new_tokens=4)  # warm-up: first-call allocations
    print(f"model loaded in {load_s:.1f} s; {len(questions)} questions, at most {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    batched, tb = timed(lambda: generate_answers(model, tok, questions, args.max_new_tokens, args.batch_size))
    alone, ta = timed(lambda: [generate_answers(model, tok, [q], args.max_new_tokens)[0] for q in questions])
    print(f"{'mode':<22}{'answer tokens':>14}{'seconds':>10}{'tokens/s':>10}")
    for name, answers, secs in ((f"batched ({args.batch_size})", batched, tb), ("one at a time", alone, ta)):
        n = sum(a["tokens"] for a in answers)
        print(f"{name:<22}{n:>14}{secs:>10.1f}{n / secs:>10.1f}")
    rate = lambda answers, secs: sum(a["tokens"] for a in answers) / secs
    print(f"speedup: {rate(batched, tb) / rate(alone, ta):.1f}x; identical answers: "
          f"{sum(a['text'] == b['text'] for a, b in zip(batched, alone))}/{len(questions)}")


if __name__ == "__main__":
    main()
