"""How many of the base model's right probe answers survive changes that teach nothing: rounding and random noise.

The base model answers the shipped probe; then its weights are rounded to bfloat16, or every tensor gets Gaussian
noise of `scale` × its mean absolute weight (seeds 0 and 1), and the probe is answered again. Each row gives the
answers kept of those the base had right and the size of the change, as the median over tensors of
‖changed − base‖ / ‖base‖, the same measure `--compare FOLDER...` prints for fine-tuned models' saved weights.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/results/trials/perturb_kept.py OUT.json [--compare FOLDER ...]
"""
from __future__ import annotations
import argparse, json, statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from gpt_finetune.model import load_model
from gpt_finetune.probe import answer_probe, compare_probe, load_probe

SCALES = (1e-3, 2e-3, 3e-3, 1e-2)


def relative_change(base: dict, changed: dict) -> float:
    "Median over tensors of ‖changed − base‖ / ‖base‖ (tensors of the same name and shape)."
    return statistics.median(((changed[k].float() - v).norm() / v.norm()).item()
                             for k, v in base.items() if k in changed and changed[k].shape == v.shape)


def kept_row(label: str, probe, base_answers, model, tok, base: dict) -> dict:
    r = compare_probe(probe, base_answers, answer_probe(model, tok, probe))
    row = {"change": label, "relative_change": relative_change(base, model.state_dict()), "kept": r["kept"],
           "of": r["base_right"], "kept_rate": r["kept_rate"], "kept_ci": r["kept_ci"],
           "right": r["finetuned_right"], "broken": [[b["input"], b["base"], b["finetuned"]] for b in r["broken"]]}
    print(f"{label}: kept {row['kept']} of {row['of']}, change {row['relative_change']:.2e}", flush=True)
    return row


@torch.no_grad()
def perturbed_rows(model, tok, probe, base_answers, base: dict) -> list[dict]:
    for p in model.parameters(): p.copy_(p.to(torch.bfloat16).float())
    rows = [kept_row("weights rounded to bfloat16", probe, base_answers, model, tok, base)]
    for scale in SCALES:
        for seed in (0, 1):
            model.load_state_dict(base)
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters(): p.add_(torch.randn(p.shape, generator=g) * p.abs().mean() * scale)
            rows.append(kept_row(f"Gaussian noise {scale:g} x mean |w|, seed {seed}", probe, base_answers, model,
                                 tok, base))
    return rows


def saved_changes(folders: list[str], base: dict) -> list[dict]:
    "The same size measure for fine-tuned models' saved weights (a run's `model/` folder)."
    def weights(folder):
        return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}
    return [{"model": f, "relative_change": relative_change(base, weights(f))} for f in folders]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--compare", nargs="*", default=[], help="fine-tuned models' folders to measure the same way")
    a = p.parse_args(argv)
    model, tok = load_model()
    probe = load_probe("default")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    base_answers = answer_probe(model, tok, probe)
    result = {"rows": perturbed_rows(model, tok, probe, base_answers, base),
              "fine_tuned": saved_changes(a.compare, base)}
    Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
