"""How the cost of fine-tuning grows on this machine: with the records, the example length and the model size.

    .venv/bin/python benchmarks/scaling.py            # full run: ~10 minutes on 2 idle CPU cores; run it ALONE
    .venv/bin/python benchmarks/scaling.py --quick    # smoke run: tiny sizes, about a minute on an idle machine

(a) records 1k -> 10k -> 100k: data preparation (`prepare_job`: read, validate, clean with near-duplicate
    search, split, tokenize with the default tokenizer) measured; one epoch's training time from the measured
    tokens/s (estimated: an epoch is that many steps of the same kind).
(b) example length 64 -> 2,048 tokens, the same 2,048 tokens per step, SmolLM2-135M's shape, all weights.
(c) model size: random-initialised configurations of real architectures (SmolLM2-135M, SmolLM2-360M, Llama-3.2-1B)
    with all weights and with LoRA (r 8), 8 examples of 64 tokens per step. A point whose estimate
    (`speed.training_bytes`, scaled by the worst measured/estimated ratio) does not fit is not run: it is reported
    as estimated.

Every training point runs `train.finetune` in its own process (peak RSS per point), one warm-up step and then
timed steps; MFU is the needed FLOPs (6 x body weights x tokens + output layer at answer tokens + causal
attention; 4 x for frozen weights under LoRA; recomputation not counted) over the bf16 matmul peak measured in the
same run. Writes benchmarks/results/scaling.json, scaling.txt and scaling.png (--out to change, '' for nothing)."""
import argparse, json, os, random, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ASSET = Path(__file__).resolve().parent.parent / "gpt_finetune" / "assets" / "scaling.json"
ARCHS = {  # random-initialised: the shapes of the real models, no download
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "SmolLM2-360M": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True),
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True),
}
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
PLAN = {  # (a) records, (b) (length, examples per step), (c) (arch, method), steps timed after the warm-up
    "full": {"records": [1_000, 10_000, 100_000], "lengths": [(64, 32), (256, 8), (1024, 2), (2048, 1)],
             "sizes": [(a, m) for a in ("SmolLM2-135M", "SmolLM2-360M", "Llama-3.2-1B") for m in ("full", "lora")],
             "steps": 2, "length_arch": "SmolLM2-135M", "size_batch": (64, 8)},
    "quick": {"records": [100, 1_000], "lengths": [(64, 4), (256, 1)], "sizes": [("tiny", "full"), ("tiny", "lora")],
              "steps": 1, "length_arch": "tiny", "size_batch": (64, 2)},
}


def llama_config(arch: str):
    from transformers import LlamaConfig
    return LlamaConfig(max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2, **ARCHS[arch])


def param_count(arch: str) -> int:
    "Parameters of `arch` without building it (embedding once: tied)."
    c = ARCHS[arch]; h, kv = c["hidden_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    layer = h * (2 * h + 2 * kv) + 3 * h * c["intermediate_size"] + 2 * h
    return c["vocab_size"] * h + c["num_hidden_layers"] * layer + h


def peak_rss_gb() -> float:
    "Peak resident memory of this process, GB."
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)


def synthetic_examples(n: int, length: int, vocab: int, seed: int = 0):
    "`n` tokenized examples of `length` tokens, the second half the answer (trained), as `tokenize_records` makes."
    from datasets import Dataset
    rng = random.Random(seed)
    ids = [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(n)]
    labels = [[-100] * (length // 2) + x[length // 2:] for x in ids]
    return Dataset.from_dict({"input_ids": ids, "labels": labels, "length": [length] * n})


def needed_flops(config, n_params: int, tokens: int, answer_tokens: int, len2: int, lora: bool) -> float:
    "Training FLOPs of the needed work: body at every token, output layer at answer tokens, causal attention."
    head = config.vocab_size * config.hidden_size
    k = 4 if lora else 6  # frozen weights: forward and input gradients, no weight gradients
    attention = 6 * config.num_hidden_layers * config.hidden_size * len2
    return k * (n_params - head) * tokens + k * head * answer_tokens + attention


def train_point(arch: str, length: int, examples: int, method: str, steps: int) -> dict:
    "Child process: `steps` timed training steps (after one warm-up) of `finetune`; its peak RSS."
    import torch
    from transformers import LlamaForCausalLM, TrainerCallback
    from gpt_finetune.model import add_lora
    from gpt_finetune.options import TrainConfig
    from gpt_finetune.train import finetune

    class Timer(TrainerCallback):
        def __init__(self): self.times = []
        def on_step_begin(self, *a, **k): self.t = time.perf_counter()
        def on_step_end(self, *a, **k): self.times.append(time.perf_counter() - self.t)

    config = llama_config(arch)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n_params = model.num_parameters()
    if method == "lora": model = add_lora(model, r=8)
    ds = synthetic_examples(examples * (steps + 1), length, config.vocab_size)
    timer, out = Timer(), tempfile.mkdtemp()
    cfg = TrainConfig(output_dir=out, epochs=1, batch_size=examples, eval_every=0, log_every=10_000, save_every=0,
                      progress=False, learning_rate=1e-5, early_stopping=0)
    finetune(model, None, ds, None, cfg, callbacks=[timer])
    step_s = sum(timer.times[1:]) / len(timer.times[1:])
    tokens, answer = examples * length, examples * (length - length // 2)
    return {"arch": arch, "method": method, "length": length, "examples": examples, "params": n_params,
            "tokens_per_step": tokens, "step_s": round(step_s, 3), "tokens_per_s": round(tokens / step_s, 1),
            "flops_per_step": needed_flops(config, n_params, tokens, answer, examples * length ** 2, method == "lora"),
            "peak_rss_gb": peak_rss_gb(),
            "estimate_gb": round(estimate(arch, examples * length, method) / 1e9, 2), "measured": True}


def estimate(arch: str, tokens: int, method: str) -> int:
    from gpt_finetune.speed import training_bytes
    return training_bytes(llama_config(arch), param_count(arch), tokens, lora=method == "lora")


def write_records(path: Path, n: int, seed: int = 0):
    "`n` distinct question/answer records of random common words (no near duplicates: cleaning keeps them)."
    words = ("time people year way day man thing woman life child world school state family student group country "
             "problem hand part place case week company system program question work government number night point "
             "home water room mother area money story fact month lot right study book eye job word business issue "
             "side kind head house service friend father power hour game line end member law car city community "
             "name president team minute idea kid body information back parent face others level office door "
             "health person art war history party result change morning reason research girl guy moment air").split()
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(words) for _ in range(k))
    path.write_text(json.dumps([{"input": say(rng.randint(6, 14)) + "?", "output": say(rng.randint(8, 30)) + "."}
                                for _ in range(n)]))


def data_point(n: int, quick: bool) -> dict:
    "Child process: prepare `n` records as the job does (validate, clean, split, tokenize); seconds and peak RSS."
    from gpt_finetune.job import prepare_job
    from gpt_finetune.model import load_tokenizer, tiny_model
    from gpt_finetune.options import DataOptions, OutputOptions, RunConfig
    tok = tiny_model("llama")[1] if quick else load_tokenizer(None)
    folder = Path(tempfile.mkdtemp()); write_records(folder / "records.json", n)
    cfg = RunConfig(data=DataOptions(path=str(folder / "records.json")),
                    output=OutputOptions(output_dir=str(folder / "run")))
    start = time.perf_counter()
    summary, _ = prepare_job(cfg, tok)
    seconds = time.perf_counter() - start
    kept, tokens = sum(summary["kept"].values()), summary["train_lengths"]["tokens"]
    return {"records": n, "kept": kept, "prep_s": round(seconds, 2), "prep_ms_per_record": round(1e3 * seconds / n, 3),
            "train_tokens": tokens, "peak_rss_gb": peak_rss_gb()}


def matmul_peak(dtype_name: str, quick: bool) -> float:
    "Best FLOP/s of a large matrix product in `dtype_name` on this machine."
    import torch
    n = 2048 if quick else 4096
    a, b = torch.randn(n, n, dtype=getattr(torch, dtype_name)), torch.randn(n, n, dtype=getattr(torch, dtype_name))
    a @ b; best = float("inf")
    for _ in range(3 if quick else 6):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def child(args: list[str], env: dict) -> dict | str:
    "Run this script as a child; its RESULT, or the last line of its error."
    res = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    found = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if res.returncode or not found:
        return f"failed (exit {res.returncode}): {(res.stderr.strip().splitlines() or [''])[-1][:200]}"
    return json.loads(found[-1][7:])


def largest_model(method: str, rows: list[dict], tokens: int, budget: float) -> int:
    ("Largest parameter count that fits `budget` (Llama-3.2-1B's layer shape, `tokens` per step), from the bytes per "
     "parameter measured at the biggest measured model of `method` (the estimate's 16 or 6 when none was measured).")
    from gpt_finetune.speed import RUNTIME_BYTES
    c = llama_config("Llama-3.2-1B")
    acts = lambda t: t * (70 * c.hidden_size * c.num_hidden_layers + 4 * c.vocab_size)
    measured = [r for r in rows if r.get("measured") and r["method"] == method]
    per_param = 6 if method == "lora" else 16
    if measured:
        r = max(measured, key=lambda r: r["params"])
        per_param = max(per_param, (r["peak_rss_gb"] * 1e9 - RUNTIME_BYTES - acts(r["tokens_per_step"])) / r["params"])
    return int((budget - RUNTIME_BYTES - acts(tokens)) / per_param)


def table(result: dict) -> str:
    "The results as Markdown tables."
    peak, out = result["peak_bf16_flops"], []
    out += ["(a) records: data preparation measured; one epoch's training time estimated from tokens/s at 64 tokens",
            "", "| records | kept | preparation s | ms per record | peak RSS | epoch (train split) at measured tok/s |",
            "|---|---|---|---|---|---|"]
    for r in result["records"]:
        epoch = f"{r['epoch_s_estimated']:.0f} s (estimated)" if r.get("epoch_s_estimated") else "n/a"
        out.append(f"| {r['records']:,} | {r['kept']:,} | {r['prep_s']:.1f} | {r['prep_ms_per_record']:.2f} "
                   f"| {r['peak_rss_gb']:.1f} GB | {epoch} |")
    for name, key in (("(b) example length (same tokens per step)", "length"), ("(c) model size", "size")):
        out += ["", name, "", "| model | method | tokens x examples | tokens/s | step s | MFU | peak RSS | estimate |",
                "|---|---|---|---|---|---|---|---|"]
        for r in result[key]:
            if not r.get("measured"):
                out.append(f"| {r['arch']} | {r['method']} | {r['length']} x {r['examples']} | - | - | - | - "
                           f"| {r['estimate_gb']:.1f} GB (not run: {r['why']}) |"); continue
            mfu = r["flops_per_step"] / r["step_s"] / peak
            out.append(f"| {r['arch']} | {r['method']} | {r['length']} x {r['examples']} | {r['tokens_per_s']:.0f} "
                       f"| {r['step_s']:.2f} | {100 * mfu:.0f} % | {r['peak_rss_gb']:.1f} GB "
                       f"| {r['estimate_gb']:.1f} GB |")
    out += [f"\nFailed: {e}" for e in result["errors"]]
    out += ["", f"Largest model that fits {result['memory_gb']:.0f} GB here (estimated, 8 x 64 tokens per step): "
            + ", ".join(f"{m} ~{n / 1e9:.1f}B parameters" for m, n in result["largest"].items())]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs (seconds)")
    p.add_argument("--out", default=None, help="folder for scaling.json/.txt (default benchmarks/results; '': none)")
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        kind, *rest = a.child
        r = data_point(int(rest[0]), a.quick) if kind == "data" else train_point(
            rest[0], int(rest[1]), int(rest[2]), rest[3], int(rest[4]))
        print("RESULT " + json.dumps(r), flush=True); return
    import psutil, torch
    plan, start = PLAN["quick" if a.quick else "full"], time.perf_counter()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", GLIBC_TUNABLES=MALLOC_TUNABLES)
    q = ["--quick"] if a.quick else []
    peaks = {d: matmul_peak(d, a.quick) for d in ("bfloat16", "float32")}
    memory = psutil.virtual_memory().total
    print(f"# matmul peak bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['float32'] / 1e9:.0f}; "
          f"{os.cpu_count()} CPUs, {memory / 1e9:.0f} GB", flush=True)
    run = lambda arch, length, n, method: child(["train", arch, str(length), str(n), method, str(plan["steps"]), *q],
                                                env)
    lengths = []
    for length, n in plan["lengths"]:
        lengths.append(run(plan["length_arch"], length, n, "full")); print("# length", length, lengths[-1], flush=True)
    sizes, (length, n) = [], plan["size_batch"]
    for arch, method in plan["sizes"]:
        ratio = max([1.0] + [r["peak_rss_gb"] / r["estimate_gb"] for r in sizes + lengths if isinstance(r, dict)
                             and r.get("measured") and r["method"] == method])  # never below the estimate
        need = estimate(arch, length * n, method) * ratio
        if need > 0.8 * psutil.virtual_memory().available:  # not run: it would push the machine into swap or OOM
            sizes.append({"arch": arch, "method": method, "length": length, "examples": n, "params": param_count(arch),
                          "estimate_gb": round(need / 1e9, 2), "measured": False,
                          "why": f"needs more than 80 % of the {psutil.virtual_memory().available / 1e9:.0f} GB free"})
        else: sizes.append(run(arch, length, n, method))
        print("# size", arch, method, sizes[-1], flush=True)
    speed = next((r["tokens_per_s"] for r in lengths if isinstance(r, dict)), None)
    records = []
    for count in plan["records"]:
        r = child(["data", str(count), *q], env)
        if isinstance(r, dict) and speed and r.get("train_tokens"): r["epoch_s_estimated"] = r["train_tokens"] / speed
        records.append(r); print("# records", count, r, flush=True)
    good = [r for r in sizes + lengths if isinstance(r, dict)]
    result = {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]), "quick": a.quick,
              "torch": torch.__version__, "device": f"{os.cpu_count()} CPU cores", "memory_gb": memory / 1e9,
              "peak_bf16_flops": peaks["bfloat16"], "peak_fp32_flops": peaks["float32"],
              "records": [r for r in records if isinstance(r, dict)],
              "length": [r for r in lengths if isinstance(r, dict)], "size": [r for r in sizes if isinstance(r, dict)],
              "errors": [r for r in records + lengths + sizes if isinstance(r, str)],
              "largest": {m: largest_model(m, good, 512, 0.8 * memory) for m in ("full", "lora")}}
    result["wall_s"] = round(time.perf_counter() - start)
    md = table(result)
    result["markdown"] = md
    print(md); print(f"# wall time {result['wall_s']} s")
    out = RESULTS if a.out is None else (Path(a.out) if a.out else None)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n")
        if out == RESULTS:  # lessons and README read the package copy: a pip-installed package has no benchmarks/
            shutil.copyfile(out / "scaling.json", ASSET)
        from gpt_finetune.scale import plot_scaling
        plot_scaling(result, out / "scaling.png")  # the README shows it; the lesson 02b_scale draws it from the JSON
        (out / "scaling.txt").write_text(f"# {result['command']}\n# matmul peak bf16 {peaks['bfloat16'] / 1e9:.0f} "
                                         f"GFLOP/s; wall time {result['wall_s']} s\n{md}\n")


if __name__ == "__main__": main()
