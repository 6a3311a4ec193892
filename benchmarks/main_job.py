"""Time the main job (`gpt-finetune run` on the defaults, the default model already cached) and keep its results.

Measures the host's bf16 and fp32 matmul peaks first (the job's time follows them), runs the job in a subprocess,
and writes what README.md quotes to gpt_finetune/assets/main_job.json: the command, the wall time, the phase
times from metrics.json, the data summary, the training figures and the base vs fine-tuned comparison.

    .venv/bin/python benchmarks/main_job.py [extra gpt-finetune run flags]
"""
import json, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_peak  # one definition of the peak measurement

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "gpt_finetune" / "assets" / "main_job.json"
TRAIN_KEYS = ("steps", "planned_steps", "extended", "train_tokens", "answer_tokens", "tokens_per_s",
              "answer_tokens_per_s", "best_step", "blend", "trained_eval_loss",
              "bf16_weights", "attention", "final_eval_loss")


def main(extra: list[str]):
    from gpt_finetune.model import best_device, fetch_default_model
    fetch_default_model()  # cached before the clock starts, as the README's figure says
    peaks = {d: matmul_peak(d, False, best_device()) for d in ("bfloat16", "float32")}
    out = ROOT / "outputs" / "run"
    cmd = [str(Path(sys.executable).parent / "gpt-finetune"), "run", "--output-dir", str(out), "--overwrite", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["data"]["source"] = Path(metrics["data"]["source"]).name  # no machine paths in a committed file
    result = {"command": "gpt-finetune run " + " ".join(extra), "wall_s": round(wall, 1),
              "peak_bf16_gflops": round(peaks["bfloat16"] / 1e9), "peak_fp32_gflops": round(peaks["float32"] / 1e9),
              "timings": metrics["timings"], "data": metrics["data"],
              "train": {k: metrics["train"].get(k) for k in TRAIN_KEYS}, "disk": metrics.get("disk"),
              "base": metrics["base"], "finetuned": metrics["finetuned"], "comparison": metrics["comparison"],
              "probe": metrics.get("probe")}
    ASSET.write_text(json.dumps(result, indent=1) + "\n")
    print(f"main job: {wall:.0f} s wall; bf16 peak {result['peak_bf16_gflops']} GFLOP/s; timings {metrics['timings']}")


if __name__ == "__main__": main(sys.argv[1:])
