"""How fast is data preparation? 100,000 generated records through validation (load_records), cleaning with
exact, normalized and MinHash near-duplicate detection (clean_dataset) and tokenization with the default
model's tokenizer (tokenize_records). Prints seconds and records/s per stage and the peak memory.

    .venv/bin/python benchmarks/data_speed.py [--n 100000]
"""
import argparse, json, random, resource, tempfile, time
from pathlib import Path

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue side "
         "kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force "
         "education").split()


def generate(n: int, seed: int = 0) -> list[dict]:
    "Question/answer pairs of random words, with 2% exact and 1% near duplicates, like a scraped data set."
    rng = random.Random(seed)
    sent = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))
    rows = [{"input": f"What about the {sent(rng.randint(5, 15))}?",
             "output": sent(rng.randint(8, 40)).capitalize() + "."} for _ in range(n)]
    for i in rng.sample(range(n), n // 50): rows[i] = dict(rows[rng.randrange(n)])
    for i in rng.sample(range(n), n // 100):
        src = rows[rng.randrange(n)]
        rows[i] = {"input": src["input"], "output": src["output"][:-1] + " indeed."}
    return rows


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    n = ap.parse_args().n
    from transformers import AutoTokenizer
    from gpt_finetune.clean import clean_dataset, length_stats
    from gpt_finetune.data import tokenize_records
    from gpt_finetune.formats import load_records
    from gpt_finetune.model import fetch_default_model, quiet_progress_bars
    quiet_progress_bars()
    tok = AutoTokenizer.from_pretrained(fetch_default_model())
    path = Path(tempfile.mkdtemp()) / "generated.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in generate(n)) + "\n")
    base = peak_mb()
    print(f"{n:,} records, {path.stat().st_size / 1e6:.1f} MB JSONL; peak RSS before: {base:.0f} MB")
    t0 = time.perf_counter(); times = {}
    loaded = load_records(path); times["validate + load"] = time.perf_counter() - t0
    t = time.perf_counter(); kept, rows = clean_dataset(loaded.records)
    times["clean + near-dup"] = time.perf_counter() - t
    t = time.perf_counter(); ds = tokenize_records(kept, tok); times["tokenize"] = time.perf_counter() - t
    t = time.perf_counter(); stats = length_stats(ds); times["length stats"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    for k, v in times.items(): print(f"  {k:18s} {v:6.1f} s  {n / v:>10,.0f} records/s")
    reasons = {}
    for r in rows: reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    print(f"dropped/flagged: {reasons}; kept {len(kept):,}; {stats['tokens']:,} tokens")
    print(f"total {total:.1f} s = {n / total:,.0f} records/s; peak RSS {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
