"""Every recipe tried, one line each: how well it learned the user's task against how much of the probe it kept.

Reads the tables in this folder (`quality.py`'s rows, and the trial files that score against TRL's SFT model the
same way), the published table (`../quality.json`) and the kept floor (`../kept_floor.json`), and prints one table
per set sorted by answers kept, with the task metric beside its TRL figure and verdict. The last column says
whether the row meets the kept part of the goal: at least 95 % of the base model's right probe answers.

    .venv/bin/python benchmarks/results/trials/frontier.py > benchmarks/results/trials/frontier.txt
"""
from __future__ import annotations
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_METRIC = {"capitals": "exact_match", "arithmetic": "exact_match", "chatterbot": "token_f1"}
GOAL = 0.95


def quality_rows(path: Path) -> list[dict]:
    "One line per set of a `quality.py`-style table (a `rows` list with `comparison` and `kept`)."
    lines = []
    for row in json.loads(path.read_text(encoding="utf-8")).get("rows", []):
        metric = TASK_METRIC[row["set"]]
        lines.append(line(path.stem, row["set"], row["comparison"][metric], metric, row["kept"]))
    return lines


def line(label: str, name: str, compared: dict, metric: str, kept: dict) -> dict:
    return {"label": label, "set": name, "metric": metric, "ours": compared["finetuned"], "trl": compared["base"],
            "diff_ci": compared["diff_ci"], "verdict": compared["verdict"], "kept": kept["ours_kept"],
            "trl_kept": kept["trl_kept"], "of": kept["base_right"]}


def trl_sdft_rows() -> list[dict]:
    d = json.loads((HERE / "trl_sdft_capitals.json").read_text(encoding="utf-8"))
    return [line("trl_sdft_capitals", d["set"], d["comparison_vs_trl_sft"]["exact_match"], "exact_match", d["kept"])]


def floor_row() -> str:
    d = json.loads((HERE.parent / "kept_floor.json").read_text(encoding="utf-8"))["probe"]
    return (f"The floor (`../kept_floor.json`: a default run on nothing but the base model's own answers, so no new "
            f"fact and no new format): kept {d['kept']} of {d['base_right']} ({d['kept_rate']:.1%}, 95 % interval "
            f"{d['kept_ci'][0]:.1%} to {d['kept_ci'][1]:.1%}).")


def table(lines: list[dict]) -> str:
    out = ["| trial | task metric: ours | TRL | difference (95 % interval) | verdict | kept | TRL kept | ≥ 95 % |",
           "|---|---:|---:|---|---|---:|---:|---|"]
    for r in sorted(lines, key=lambda r: (-r["kept"], -r["ours"])):
        lo, hi = r["diff_ci"]
        out.append(f"| {r['label']} | {r['ours']:.3f} | {r['trl']:.3f} | {r['ours'] - r['trl']:+.3f} "
                   f"[{lo:+.3f}, {hi:+.3f}] | {r['verdict']} | {r['kept']} ({r['kept'] / r['of']:.1%}) | "
                   f"{r['trl_kept']} | {'yes' if r['kept'] >= GOAL * r['of'] else 'no'} |")
    return "\n".join(out)


def main():
    lines = [l for p in sorted(HERE.glob("quality_*.json")) for l in quality_rows(p)]
    lines += quality_rows(HERE.parent / "quality.json") + trl_sdft_rows()
    for l in lines:
        l["label"] = "published (`../quality.json`)" if l["label"] == "quality" else l["label"]
    print(floor_row())
    for name, metric in TASK_METRIC.items():
        rows = [l for l in lines if l["set"] == name]
        reached = [l for l in rows if l["kept"] >= GOAL * l["of"]]
        print(f"\n## {name}: {metric}, {len(rows)} runs; {len(reached)} kept at least 95 %\n")
        print(table(rows))


if __name__ == "__main__":
    main()
