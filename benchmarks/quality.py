"""Quality: `gpt-finetune run` on its defaults against TRL's default recipe, on the same data, in one run.

    .venv/bin/python benchmarks/quality.py                 # every set (see SETS); run alone on the machine
    .venv/bin/python benchmarks/quality.py --quick         # a few records per set: checks that everything runs
    .venv/bin/python benchmarks/quality.py --sets capitals # some sets only
    .venv/bin/python benchmarks/quality.py --work W --reuse-trl --label try1 --ours-args "--learning-rate 1e-4"
                                                           # a recipe being tried, TRL's models reused from W

For each data set the script writes a training file and a test file, then trains the default model twice on the
same training records:
- TRL: `SFTTrainer` with its default `SFTConfig` (3 epochs, lr 2e-5, linear decay, batch 8, bf16, gradient
  checkpointing, completion-only loss on conversational prompt/completion records rendered with the model's chat
  template), `use_cpu` on a CPU;
- gpt_finetune: `gpt-finetune run --data train.jsonl --test-data test.jsonl` with nothing else set.
By default the two trainings of a set run at the same time, one thread each (the 2-core machine this was written
on finishes sooner that way); `--one-at-a-time` gives each every core in turn. Both models are then scored by
`gpt-finetune evaluate` on the same test records with TRL's model as the baseline, so every metric comes with the
paired-bootstrap 95 % interval of the difference (ours - TRL), and on the general-knowledge probe, where "kept" is
the share of the probe questions the base model answers right that each fine-tuned model still answers right
(compared on the same questions, with a paired-bootstrap interval of the difference), and "probe accuracy" the share
of every probe question each answers right, which also counts the answers a fine-tune gets newly right. Each
model's probe answers are made by one script (`PROBE_SCRIPT`), the same for both.
Results: benchmarks/results/quality.{json,txt} and gpt_finetune/assets/quality.json (read by README.md and the
training lesson).

The data sets are built here from facts written for this project (short answers), from arithmetic (right by
construction) and from the chatterbot-corpus package (BSD-3-Clause, conversational free text), so every record's
licence is known.
"""
from __future__ import annotations
import argparse, hashlib, json, os, random, re, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ASSET = ROOT / "gpt_finetune" / "assets" / "quality.json"  # what README.md and the lessons render
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


def arithmetic() -> list[dict]:
    "Short computed answers: sums, differences and products of two numbers from 2 to 99 (right by construction)."
    rng, out = random.Random(0), []
    ops = [("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b)]
    for n in range(4000):
        (word, f), a, b = ops[n % 3], rng.randint(2, 99), rng.randint(2, 99)
        a, b = (max(a, b), min(a, b)) if word == "minus" else (a, b)
        out.append({"input": f"What is {a} {word} {b}?", "output": str(f(a, b))})
    return out


# name: (builder, training records, test records); the tests are held out of training, same seed for every run
SETS = {"capitals": (capitals, 70, 35), "chatterbot": (chatterbot, 400, 150), "arithmetic": (arithmetic, 600, 150)}


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


PROBE_SCRIPT = """
import json, sys
from gpt_finetune.model import load_model
from gpt_finetune.job import probe_answers
from gpt_finetune.probe import compare_probe, load_probe
probe = load_probe("default")
base, tok = load_model()
base_p = probe_answers(base, tok, probe, True)  # cached, as `run` caches it
model, tok = load_model(sys.argv[1])
tuned = probe_answers(model, tok, probe)
json.dump({"result": compare_probe(probe, base_p, tuned), "base_right": [a["right"] for a in base_p],
           "right": [a["right"] for a in tuned]}, open(sys.argv[2], "w"), ensure_ascii=False)
"""


def _env(threads: int | None = None) -> dict:
    env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return {**env, "OMP_NUM_THREADS": str(threads)} if threads else env


def _start(cmd: list[str], log: Path, threads: int | None = None) -> tuple:
    "Start one step in its own process, its output in `log`."
    f = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(threads))
    return proc, f, time.perf_counter(), cmd, log


def _wait(started: tuple) -> float:
    "Wait for a step from `_start`; returns its seconds (stops the benchmark if it failed)."
    proc, f, start, cmd, log = started
    code = proc.wait(); f.close()
    if code: raise SystemExit(f"{' '.join(map(str, cmd[:3]))} failed ({code}); see {log}")
    return round(time.perf_counter() - start, 1)


def _run(cmd: list[str], log: Path) -> float:
    "Run one step in its own process, its output in `log`; returns its seconds (stops the benchmark if it fails)."
    return _wait(_start(cmd, log))


def start_trl(d: Path, train_f: Path, reuse: bool, threads: int | None) -> tuple | None:
    "Start TRL's default recipe on `train_f` in `d/trl`; None when `reuse` found it done on the same file."
    stamp = d / "trl" / "done.json"
    if reuse and stamp.exists() and json.loads(stamp.read_text()).get("key") == _trl_key(train_f): return None
    return _start([sys.executable, "-c", TRL_SCRIPT, str(train_f), str(d / "trl")], d / "trl.log", threads)


def _trl_key(train_f: Path) -> dict:
    return {"train": hashlib.sha256(train_f.read_bytes()).hexdigest(), "script": TRL_SCRIPT}


def finish_trl(d: Path, train_f: Path, started: tuple | None) -> float:
    "Wait for TRL's run, answer the probe with its model; returns its process's seconds (kept in done.json)."
    if started is None: return json.loads((d / "trl" / "done.json").read_text())["train_s"]
    secs = _wait(started)
    probe_rights(d, d / "trl" / "model", d / "trl" / "probe.json", again=True)  # a new model: never an old file
    (d / "trl" / "done.json").write_text(json.dumps({"key": _trl_key(train_f), "train_s": secs}))
    return secs


def probe_rights(d: Path, model: Path, out: Path, again: bool = False) -> dict:
    "The probe file of `model` (`PROBE_SCRIPT`): made once, again when asked or when an older one lacks the answers."
    if again or not out.exists() or "right" not in json.loads(out.read_text()):
        _run([sys.executable, "-c", PROBE_SCRIPT, str(model), str(out)], d / f"{out.stem}.log")
    return json.loads(out.read_text())


def paired_rates(ours: list[bool], trl: list[bool], seed: int = 0) -> dict:
    "Both models' share right on the same questions, the difference, its paired-bootstrap 95 % interval, a verdict."
    import numpy as np
    o, t = np.array(ours, float), np.array(trl, float)
    idx = np.random.default_rng(seed).integers(0, len(o), (10_000, len(o)))
    lo, hi = np.quantile(o[idx].mean(1) - t[idx].mean(1), [0.025, 0.975])
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"
    return {"ours_rate": o.mean(), "trl_rate": t.mean(), "ours_count": int(o.sum()), "trl_count": int(t.sum()),
            "diff": o.mean() - t.mean(), "diff_ci": [float(lo), float(hi)], "verdict": verdict}


def kept_rows(ours: dict, trl: dict, seed: int = 0) -> dict:
    "Kept rate of both recipes on the questions the base model had right, and the paired bootstrap of the difference."
    was = [i for i, r in enumerate(trl["base_right"]) if r]
    row = paired_rates([ours["right"][i] for i in was], [trl["right"][i] for i in was], seed)
    return {"base_right": len(was), "ours_kept": row["ours_count"], "trl_kept": row["trl_count"], **row,
            "ours_ci": ours["result"]["kept_ci"], "trl_ci": trl["result"]["kept_ci"]}


def accuracy_rows(ours: dict, trl: dict, seed: int = 0) -> dict:
    "Share of every probe question each model answers right (the base model's share beside), paired bootstrap."
    return {"questions": len(ours["right"]), "base_rate": sum(trl["base_right"]) / len(trl["base_right"]),
            **paired_rates(ours["right"], trl["right"], seed)}


def run_set(name: str, work: Path, quick: bool, reuse: bool = False, ours_args: list[str] = (), label: str = "ours",
            together: bool = True) -> dict:
    "Train both recipes on set `name` (at once, a thread each, when `together`), compare on its test records and probe."
    train, test = split(name, quick)
    d = work / name; d.mkdir(parents=True, exist_ok=True)
    train_f, test_f = write_jsonl(d / "train.jsonl", train), write_jsonl(d / "test.jsonl", test)
    if reuse and (d / f"eval-{label}" / "metrics.json").exists():  # this recipe already ran and was scored here
        return {**score_set(name, d, label, len(train), len(test), ours_args), "rescored": True}
    start, threads = time.perf_counter(), 1 if together else None
    trl = start_trl(d, train_f, reuse, threads)
    if not together: finish_trl(d, train_f, trl); trl = None
    ours = _start([str(BIN / "gpt-finetune"), "run", "--data", str(train_f), "--test-data", str(test_f),
                   "--output-dir", str(d / label), "--overwrite", "--no-progress", *ours_args], d / f"{label}.log",
                  threads if trl is not None else None)  # alone when TRL is not training beside it
    _wait(ours)
    if together: finish_trl(d, train_f, trl)
    _run([str(BIN / "gpt-finetune"), "evaluate", "--model", str(d / label / "model"), "--baseline",
          str(d / "trl" / "model"), "--data", str(test_f), "--output-dir", str(d / f"eval-{label}"), "--probe", "none"],
         d / f"eval-{label}.log")
    row = score_set(name, d, label, len(train), len(test), ours_args, probe_again=True)
    wall = {"seconds": round(time.perf_counter() - start, 1)}  # the set's time, kept for a later re-scoring
    (d / f"eval-{label}" / "set_seconds.json").write_text(json.dumps(wall))
    return {**row, "set_s": wall["seconds"]}


def trl_train_seconds(d: Path) -> float | None:
    "Seconds of TRL's `trainer.train()`, as its Trainer logged them (`train_runtime`) in `d/trl.log`."
    found = re.findall(r"'train_runtime': '?([0-9.]+)", (d / "trl.log").read_text(errors="replace"))
    return float(found[-1]) if found else None


def score_set(name: str, d: Path, label: str, n_train: int, n_test: int, ours_args,
              probe_again: bool = False, # our model was just trained: its probe file from an earlier run is stale
             ) -> dict:
    "The row of set `name` from its folder: the comparison on the test records, the probe, the runs' figures."
    comparison = json.loads((d / f"eval-{label}" / "metrics.json").read_text())["comparison"]
    ours = json.loads((d / label / "metrics.json").read_text())
    trl_p = probe_rights(d, d / "trl" / "model", d / "trl" / "probe.json")
    ours_p = probe_rights(d, d / label / "model", d / f"probe-{label}.json", again=probe_again)
    timed = d / f"eval-{label}" / "set_seconds.json"
    return {"set": name, "train_records": n_train, "test_records": n_test,
            # the training phase of each, timed by each: TRL's train(), our run's training (its evaluations included)
            "train_s": {"trl": trl_train_seconds(d), "ours": ours["timings"].get("training_s")},
            "ours_args": list(ours_args), "comparison": comparison,
            "kept": kept_rows(ours_p, trl_p), "probe_accuracy": accuracy_rows(ours_p, trl_p),
            "ours_steps": ours["train"].get("steps"), "ours_epochs": ours["train"].get("epochs"),
            "ours_best_step": ours["train"].get("best_step"), "ours_planned_steps": ours["train"].get("planned_steps"),
            "ours_extended": ours["train"].get("extended"), "replay": ours["data"].get("replay"),
            "set_s": json.loads(timed.read_text())["seconds"] if timed.exists() else None}


SHOWN = ("exact_match", "token_f1", "rougeL", "chrf", "eval_loss", "stop_rate")


def table(rows: list[dict]) -> str:
    "One markdown row per set and metric: ours, TRL, the difference with its 95 % interval, and the verdict."
    lines = ["| set | metric | gpt_finetune | TRL default | difference (95 % interval) | verdict |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        where = f"{r['set']} ({r['train_records']} pairs)"
        for key in SHOWN:
            c = r["comparison"].get(key)
            if not c: continue
            lo, hi = c["diff_ci"]
            lines.append(f"| {where} | {key} | {c['finetuned']:.3f} | {c['base']:.3f} "
                         f"| {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {c['verdict']} |")
        k = r["kept"]; lo, hi = k["diff_ci"]
        lines.append(f"| {where} | kept (of {k['base_right']} probe answers the base had right) "
                     f"| {k['ours_rate']:.3f} ({k['ours_kept']}) | {k['trl_rate']:.3f} ({k['trl_kept']}) "
                     f"| {k['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {k['verdict']} |")
        a = r["probe_accuracy"]; lo, hi = a["diff_ci"]
        lines.append(f"| {where} | probe accuracy (of {a['questions']} questions; base model {a['base_rate']:.3f}) "
                     f"| {a['ours_rate']:.3f} | {a['trl_rate']:.3f} "
                     f"| {a['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {a['verdict']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="16 training and 8 test records per set")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from {', '.join(SETS)}")
    p.add_argument("--work", default=None, help="folder for the data, models and logs (default: a new temporary one)")
    p.add_argument("--reuse-trl", action="store_true", help="reuse TRL's model from an earlier run in --work "
                   "(same training file): for trying recipes, not for the figures")
    p.add_argument("--ours-args", default="", help="extra `gpt-finetune run` flags (for trying recipes)")
    p.add_argument("--label", default="ours", help="folder name of this recipe's run inside each set's folder")
    p.add_argument("--publish", action="store_true", help="write the table where README.md and the lessons read it "
                   "(benchmarks/results and gpt_finetune/assets), even for a recipe being tried")
    p.add_argument("--one-at-a-time", action="store_true", help="train TRL and gpt_finetune one after the other, "
                   "each with every core (default: at the same time, one thread each)")
    a = p.parse_args(argv)
    names = [s for s in a.sets.split(",") if s]
    unknown = [s for s in names if s not in SETS]
    if unknown: raise SystemExit(f"--sets: unknown {', '.join(unknown)}; choose from {', '.join(SETS)}")
    work = Path(a.work or tempfile.mkdtemp(prefix="quality-"))
    start, rows = time.perf_counter(), []
    for name in names:
        rows.append(run_set(name, work, a.quick, a.reuse_trl, a.ours_args.split(), a.label, not a.one_at_a_time))
        print(f"{name}: done in {sum(v or 0 for v in rows[-1]['train_s'].values()):.0f} s of training", flush=True)
    md = table(rows)
    took = round((time.perf_counter() - start) / 60, 1)
    sets = [r["set_s"] for r in rows]  # a re-scoring invocation takes seconds: the runs' own times are the figure
    minutes = round(sum(sets) / 60, 1) if all(s is not None for s in sets) else took
    out = {"quick": a.quick, "minutes": minutes, "this_invocation_minutes": took, "cpus": os.cpu_count(),
           "reused_trl": a.reuse_trl,
           "together": not a.one_at_a_time, "rows": rows, "markdown": md}
    trial = a.reuse_trl or a.ours_args or a.label != "ours"  # a recipe being tried: its table stays in --work
    where = work if trial and not a.publish else RESULTS
    where.mkdir(exist_ok=True)
    name = f"quality_{a.label}" if trial and not a.publish else "quality_quick" if a.quick else "quality"
    (where / f"{name}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    (where / f"{name}.txt").write_text(md + "\n")
    if where == RESULTS and not a.quick: (ASSET).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(md)
    print(f"work folder: {work}; {out['minutes']} minutes")


if __name__ == "__main__":
    main()
