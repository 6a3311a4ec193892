"""Kept's floor: fine-tune on nothing but the base model's own answers and count the probe answers it breaks anyway.

The training file holds the base model's greedy answers to the shipped replay prompts (those that ended), so it
teaches no new fact and no new format; `gpt-finetune run` trains on it with its defaults (replay off: the file is
replay). Whatever share of the probe's right answers this run breaks is what any fine-tune of the same length breaks
without learning anything: the floor under "kept" in `benchmarks/quality.py`.

    .venv/bin/python benchmarks/kept_floor.py [--work FOLDER]   # about 3 minutes on 2 cores; run alone

Writes benchmarks/results/kept_floor.json.
"""
from __future__ import annotations
import argparse, json, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "kept_floor.json"
TEST = [{"input": "What is the capital of France?", "output": "Paris"},  # the run needs a test file; not the point
        {"input": "What is 2 plus 2?", "output": "4"}]


def own_answers(path: Path) -> int:
    "Write the base model's answers that ended, to the shipped replay prompts, as input/output records; their count."
    from gpt_finetune.model import load_model
    from gpt_finetune.replay import load_replay, replay_answers
    model, tok = load_model()
    answers = replay_answers(model, tok, load_replay("default"))
    ended = [a for a in answers if a["output"] and a["finish_reason"] == "stop"]
    path.write_text("".join(json.dumps({"input": a["input"], "output": a["output"]}, ensure_ascii=False) + "\n"
                            for a in ended), encoding="utf-8")
    return len(ended)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=None, help="folder for the data and the run (default: a new temporary one)")
    work = Path(p.parse_args(argv).work or tempfile.mkdtemp(prefix="kept-floor-"))
    work.mkdir(parents=True, exist_ok=True)
    data, test = work / "own_answers.jsonl", work / "test.jsonl"
    n = own_answers(data)
    test.write_text("".join(json.dumps(r) + "\n" for r in TEST), encoding="utf-8")
    subprocess.run([str(Path(sys.executable).parent / "gpt-finetune"), "run", "--data", str(data), "--test-data",
                    str(test), "--replay", "none", "--output-dir", str(work / "run"), "--overwrite", "--no-progress"],
                   check=True)
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    probe = {k: v for k, v in metrics["probe"].items() if k != "broken"}
    out = {"own_answers": n, "recipe": "gpt-finetune run on its defaults, --replay none",
           **{k: metrics["train"][k] for k in ("steps", "planned_steps", "extended", "epochs", "blend")},
           "probe": probe,
           "broken": [{k: b[k] for k in ("input", "base", "finetuned")} for b in metrics["probe"]["broken"]]}
    RESULT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"{n} own answers, {out['steps']} steps: kept {probe['kept']} of {probe['base_right']} "
          f"({100 * probe['kept_rate']:.1f} %), broke {probe['base_right'] - probe['kept']}, gained {probe['gained']}")


if __name__ == "__main__":
    main()
