"""What checkpointing costs, and what a second process buys, on this machine.

    # seconds per checkpoint save, size, % of a run
    .venv/bin/python benchmarks/scale_speed.py checkpoint [--model tiny]
    # 1 process (2 threads) vs torchrun 2 x 1 thread
    .venv/bin/python benchmarks/scale_speed.py processes  [--model tiny]

Both train on the bundled chatterbot pairs with the default model (SmolLM2-135M; `--model tiny`: a tiny random
Llama) and global batch 8. Step times exclude the first step (warm-up). Figures from a shared 2-core machine are
noisy: run it alone and repeat."""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

from transformers import TrainerCallback


class Timer(TrainerCallback):
    "Seconds per training step (after the first) and per checkpoint save."
    def __init__(self): self.steps, self.saves, self.t = [], [], None
    def on_step_begin(self, args, state, control, **kw): self.t0 = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        self.t = time.perf_counter()
        if state.global_step > 1: self.steps.append(self.t - self.t0)
    def on_save(self, args, state, control, **kw): self.saves.append(time.perf_counter() - self.t)


def _setup(model_name: str, n: int):
    from gpt_finetune.data import default_data_path, tokenize_records
    from gpt_finetune.formats import load_records
    from gpt_finetune.model import load_model, tiny_model
    model, tok = tiny_model("llama") if model_name == "tiny" else load_model(None)
    return model, tok, tokenize_records(load_records(default_data_path()).records[:n], tok)


def checkpoint(a):
    from gpt_finetune.options import TrainConfig
    from gpt_finetune.train import finetune
    model, tok, ds = _setup(a.model, 8 * a.steps)
    out = Path(tempfile.mkdtemp())
    timer = Timer()
    cfg = TrainConfig(output_dir=str(out), epochs=1, batch_size=8, eval_every=0, log_every=1, save_every=a.every,
                      save_limit=1, progress=False, seed=0)
    finetune(model, tok, ds, None, cfg, callbacks=[timer])
    ckpt = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    step, save = sum(timer.steps) / len(timer.steps), sum(timer.saves) / len(timer.saves)
    print(f"model {a.model}: {len(timer.saves)} saves, {save:.2f} s per checkpoint save ({size / 1e6:.0f} MB: "
          f"{', '.join(sorted(p.name for p in ckpt.iterdir()))}); {step:.2f} s per training step (batch 8)")
    for every in (20, 100):
        print(f"  checkpoint every {every} steps: {100 * save / (every * step + save):.1f} % of training time")
    shutil.rmtree(out)


def _worker(a):
    "One process of the `processes` benchmark (under torchrun when 2): train `steps` steps, rank 0 prints JSON."
    from gpt_finetune.options import TrainConfig
    from gpt_finetune.scale import leave_process_group
    from gpt_finetune.train import finetune
    model, tok, ds = _setup(a.model, 8 * a.steps)
    timer = Timer()
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), epochs=1, batch_size=a.batch_size, eval_every=0, log_every=1,
                      save_every=0, progress=False, seed=0)
    finetune(model, tok, ds, None, cfg, callbacks=[timer])
    if int(os.environ.get("RANK", 0)) == 0:
        print("RESULT " + json.dumps({"step_s": sum(timer.steps) / len(timer.steps),
                                      "tokens_per_step": sum(ds["length"]) / a.steps}))
    leave_process_group()  # under torchrun: each process leaves the group before exiting, or one may abort


def processes(a):
    me = [__file__, "_worker", "--model", a.model, "--steps", str(a.steps)]
    runs = {"1 process x 2 threads, batch 8": ({"OMP_NUM_THREADS": "2"}, [sys.executable, *me, "--batch-size", "8"]),
            "1 process x 1 thread, batch 8": ({"OMP_NUM_THREADS": "1"}, [sys.executable, *me, "--batch-size", "8"]),
            "2 processes x 1 thread, batch 4 each (torchrun, gloo)": ({"OMP_NUM_THREADS": "1"},
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *me,
                 "--batch-size", "4"])}
    for name, (env, cmd) in runs.items():
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
        if res.returncode or not line: sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
        r = json.loads(line[0][7:])
        print(f"{name}: {r['step_s']:.3f} s/step, {r['tokens_per_step'] / r['step_s']:.0f} tokens/s")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["checkpoint", "processes", "_worker"])
    p.add_argument("--model", default="default", help="default (SmolLM2-135M) or tiny")
    p.add_argument("--steps", type=int, default=7, help="training steps of batch 8")
    p.add_argument("--every", type=int, default=2, help="checkpoint every N steps (checkpoint benchmark)")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    {"checkpoint": checkpoint, "processes": processes, "_worker": _worker}[a.what](a)
