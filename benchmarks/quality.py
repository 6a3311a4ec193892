"""Quality: `gpt-finetune run` on its defaults against TRL's default recipe, on the same data, in one run.

    .venv/bin/python benchmarks/quality.py                 # every set (see SETS); run alone on the machine
    .venv/bin/python benchmarks/quality.py --quick         # a few records per set: checks that everything runs
    .venv/bin/python benchmarks/quality.py --sets capitals # some sets only

For each data set the script writes a training file and a test file, then trains the default model twice on the
same training records:
- TRL: `SFTTrainer` with its default `SFTConfig` (3 epochs, lr 2e-5, batch 8, completion-only loss on
  conversational prompt/completion records rendered with the model's chat template), `use_cpu` on a CPU;
- gpt_finetune: `gpt-finetune run --data train.jsonl --test-data test.jsonl` with nothing else set.
Both models are then scored by `gpt-finetune evaluate` on the same test records with TRL's model as the baseline,
so every metric comes with the paired-bootstrap 95 % interval of the difference (ours - TRL), and on the general
knowledge probe, where "kept" counts the probe questions the base model answers right that each fine-tuned model
still answers right. Each training runs in its own process. Results: benchmarks/results/quality.json (rows and a
markdown table) and quality.txt.

The data sets are built here from facts written for this project (short answers) and from the chatterbot-corpus
package (BSD-3-Clause, conversational free text), so every record's licence is known.
"""
from __future__ import annotations
import argparse, json, os, random, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
# Same glibc malloc thresholds for both trainings (see train_speed.py): fewer page faults, same for everyone.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"

COUNTRIES = {  # country: (capital, language, continent)
    "France": ("Paris", "French", "Europe"), "Germany": ("Berlin", "German", "Europe"),
    "Spain": ("Madrid", "Spanish", "Europe"), "Italy": ("Rome", "Italian", "Europe"),
    "Portugal": ("Lisbon", "Portuguese", "Europe"), "Greece": ("Athens", "Greek", "Europe"),
    "Poland": ("Warsaw", "Polish", "Europe"), "Sweden": ("Stockholm", "Swedish", "Europe"),
    "Norway": ("Oslo", "Norwegian", "Europe"), "Finland": ("Helsinki", "Finnish", "Europe"),
    "Denmark": ("Copenhagen", "Danish", "Europe"), "Austria": ("Vienna", "German", "Europe"),
    "Hungary": ("Budapest", "Hungarian", "Europe"), "Romania": ("Bucharest", "Romanian", "Europe"),
    "Ireland": ("Dublin", "English", "Europe"), "Egypt": ("Cairo", "Arabic", "Africa"),
    "Kenya": ("Nairobi", "Swahili", "Africa"), "Nigeria": ("Abuja", "English", "Africa"),
    "Morocco": ("Rabat", "Arabic", "Africa"), "Ethiopia": ("Addis Ababa", "Amharic", "Africa"),
    "Japan": ("Tokyo", "Japanese", "Asia"), "China": ("Beijing", "Chinese", "Asia"),
    "South Korea": ("Seoul", "Korean", "Asia"), "Thailand": ("Bangkok", "Thai", "Asia"),
    "Vietnam": ("Hanoi", "Vietnamese", "Asia"), "India": ("New Delhi", "Hindi", "Asia"),
    "Brazil": ("Brasília", "Portuguese", "South America"), "Argentina": ("Buenos Aires", "Spanish", "South America"),
    "Chile": ("Santiago", "Spanish", "South America"), "Peru": ("Lima", "Spanish", "South America"),
    "Mexico": ("Mexico City", "Spanish", "North America"), "Canada": ("Ottawa", "English", "North America"),
    "Cuba": ("Havana", "Spanish", "North America"), "Australia": ("Canberra", "English", "Oceania"),
    "New Zealand": ("Wellington", "English", "Oceania"),
}
QUESTIONS = {"capital": "What is the capital of {}?", "language": "Which language is mainly spoken in {}?",
             "continent": "On which continent is {}?"}


def capitals() -> list[dict]:
    "Short factual answers: a country's capital, language and continent (105 records, our own table)."
    return [{"input": q.format(c), "output": facts[i]} for c, facts in COUNTRIES.items()
            for i, q in enumerate(QUESTIONS.values())]


def chatterbot() -> list[dict]:
    "Conversational free text: distinct consecutive-turn pairs of chatterbot-corpus (BSD-3-Clause)."
    import chatterbot_corpus
    from gpt_finetune.data import chatterbot_pairs
    return chatterbot_pairs(Path(chatterbot_corpus.__file__).parent / "data" / "english")


def _number_fact(n: int) -> str:
    "A few true sentences about `n`, built from arithmetic so they are right by construction."
    kind = "even" if n % 2 == 0 else "odd"
    prime = n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))
    return (f"{n} is an {kind} number{' and a prime' if prime else ''}. It comes after {n - 1} and before {n + 1}. "
            f"Its square is {n * n}, and the sum of its digits is {sum(map(int, str(n)))}.")


def arithmetic() -> list[dict]:
    "Short arithmetic answers and longer generated descriptions of numbers (4,000 records, by construction)."
    rng, out = random.Random(0), []
    for n in range(2000):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        out.append({"input": f"What is {a} plus {b}?", "output": str(a + b)} if n % 2 else
                   {"input": f"What is {a} times {b}?", "output": str(a * b)})
        m = rng.randint(10, 9999)
        out.append({"input": f"Tell me about the number {m}.", "output": _number_fact(m)})
    return out


# name: (builder, training records, test records); the tests are held out of training, same seed for every run
SETS = {"capitals": (capitals, 70, 35), "chatterbot": (chatterbot, 600, 150), "arithmetic": (arithmetic, 3000, 200)}


def split(name: str, quick: bool) -> tuple[list[dict], list[dict]]:
    "Deduplicated records of set `name`, shuffled with a fixed seed, cut into training and test records."
    build, n_train, n_test = SETS[name]
    seen, records = set(), []
    for r in build():
        if r["input"] not in seen: seen.add(r["input"]); records.append({"input": r["input"], "output": r["output"]})
    random.Random(42).shuffle(records)
    if quick: n_train, n_test = 16, 8
    if len(records) < n_train + n_test: raise SystemExit(f"{name}: {len(records)} records, need {n_train + n_test}")
    return records[:n_train], records[n_train:n_train + n_test]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


TRL_SCRIPT = """
import json, sys
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from gpt_finetune.model import best_device, load_model, quiet_progress_bars
quiet_progress_bars()
train, out = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(train, encoding="utf-8")]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["input"]}],
                         "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
model, tok = load_model()
args = SFTConfig(output_dir=out + "/trainer", use_cpu=best_device() == "cpu", report_to="none", save_strategy="no",
                 disable_tqdm=True)  # everything else: SFTConfig's defaults
trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=args)
trainer.train()
trainer.save_model(out + "/model"); tok.save_pretrained(out + "/model")
"""


def _run(cmd: list[str], log: Path) -> float:
    "Run one step in its own process, its output in `log`; returns its seconds (stops the benchmark if it fails)."
    env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(log, "w") as f: res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode: raise SystemExit(f"{' '.join(map(str, cmd[:3]))} failed ({res.returncode}); see {log}")
    return round(time.perf_counter() - start, 1)


def run_set(name: str, work: Path, quick: bool) -> dict:
    "Train both recipes on set `name` and compare them on its test records."
    train, test = split(name, quick)
    d = work / name; d.mkdir(parents=True)
    train_f, test_f = write_jsonl(d / "train.jsonl", train), write_jsonl(d / "test.jsonl", test)
    secs = {"trl": _run([sys.executable, "-c", TRL_SCRIPT, str(train_f), str(d / "trl")], d / "trl.log"),
            "ours": _run([str(BIN / "gpt-finetune"), "run", "--data", str(train_f), "--test-data", str(test_f),
                          "--output-dir", str(d / "ours"), "--no-progress"], d / "ours.log")}
    _run([str(BIN / "gpt-finetune"), "evaluate", "--model", str(d / "ours" / "model"), "--baseline",
          str(d / "trl" / "model"), "--data", str(test_f), "--output-dir", str(d / "eval")], d / "eval.log")
    metrics = json.loads((d / "eval" / "metrics.json").read_text())
    return {"set": name, "train_records": len(train), "test_records": len(test), "train_s": secs,
            "comparison": metrics["comparison"]}


SHOWN = ("exact_match", "token_f1", "rougeL", "chrf", "eval_loss", "stop_rate")


def table(rows: list[dict]) -> str:
    "One markdown row per set and metric: ours, TRL, the difference with its 95 % interval, and the verdict."
    lines = ["| set | metric | gpt_finetune | TRL default | difference (95 % interval) | verdict |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        for key in SHOWN:
            c = r["comparison"].get(key)
            if not c: continue
            lo, hi = c["diff_ci"]
            lines.append(f"| {r['set']} ({r['train_records']} pairs) | {key} | {c['finetuned']:.3f} | {c['base']:.3f} "
                         f"| {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {c['verdict']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="16 training and 8 test records per set")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from {', '.join(SETS)}")
    p.add_argument("--work", default=None, help="folder for the data, models and logs (default: a new temporary one)")
    a = p.parse_args(argv)
    names = [s for s in a.sets.split(",") if s]
    unknown = [s for s in names if s not in SETS]
    if unknown: raise SystemExit(f"--sets: unknown {', '.join(unknown)}; choose from {', '.join(SETS)}")
    work = Path(a.work or tempfile.mkdtemp(prefix="quality-"))
    start, rows = time.perf_counter(), []
    for name in names:
        rows.append(run_set(name, work, a.quick))
        print(f"{name}: done in {sum(rows[-1]['train_s'].values()):.0f} s of training", flush=True)
    md = table(rows)
    out = {"quick": a.quick, "minutes": round((time.perf_counter() - start) / 60, 1), "rows": rows, "markdown": md}
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if a.quick else ""
    (RESULTS / f"quality{suffix}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    (RESULTS / f"quality{suffix}.txt").write_text(md + "\n")
    print(md)
    print(f"work folder: {work}; {out['minutes']} minutes")


if __name__ == "__main__":
    main()
