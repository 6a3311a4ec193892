#!/usr/bin/env bash
# The GPU path, measured on one CUDA GPU in about 8 minutes:
#   1. the `cuda`- and `slow`-flagged cells of the notebooks that have CUDA cells, and of 02_train (real fine-tune);
#   2. the CUDA tests (packed-row attention boundaries with flash-attention 2 or SDPA, the default-model tests);
#   3. one QLoRA step (4-bit NF4 base, LoRA adapters) on the default model;
#   4. the training benchmark of gpt_finetune's default on the default model and on a ~0.5B Hub model, printing
#      tokens/s and MFU against the GPU's measured bf16 matmul peak.
# Usage (from anywhere):  bash benchmarks/gpu_check.sh
#   PY=path/to/python      the interpreter with gpt_finetune installed (default: .venv/bin/python, else python)
#   HUB_MODEL=org/name     the second benchmark model (default: Qwen/Qwen2.5-0.5B-Instruct; needs the Hub or its cache)
#   GPU_CHECK_CPU=1        run the same steps on a machine without a GPU, shortened (a check of this script itself)
# Optional packages it uses when present: flash-attn (variable-length attention), liger-kernel (fused
# linear-cross-entropy), bitsandbytes (QLoRA; step 3 is reported as skipped without it).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
HUB_MODEL=${HUB_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
CPU=${GPU_CHECK_CPU:-0}
failed=()
step() { echo; echo "== $1 ($(date +%T))"; }
run() {  # run NAME SECONDS CMD...: a step with its own time limit; its failure is recorded, the others still run
  local name=$1 limit=$2; shift 2
  if timeout "$limit" "$@"; then echo "-- $name: ok"; else echo "-- $name: FAILED (exit $?)"; failed+=("$name"); fi
}

"$PY" - "$CPU" <<'EOF' || exit 2
import sys, torch
if not torch.cuda.is_available() and sys.argv[1] != "1":
    sys.exit("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); "
             "GPU_CHECK_CPU=1 checks the script on a CPU")
import importlib.util as u
found = ", ".join(f"{p} {'yes' if u.find_spec(p) else 'no'}" for p in ("flash_attn", "liger_kernel", "bitsandbytes"))
where = (f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if torch.cuda.is_available()
         else "CPU (script check)")
print(f"gpu_check on {where}, torch {torch.__version__}; {found}")
EOF
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
QUICK=(); [ "$CPU" = 1 ] && QUICK=(--quick)

step "1/4 cuda- and slow-flagged notebook cells"
NBS=(nbs/02_train.ipynb)
for nb in $(grep -l '#| cuda' nbs/*.ipynb nbs/*/*.ipynb 2>/dev/null); do
  # cuda cells that launch 2 processes (torchrun, accelerate with FSDP or DeepSpeed) need two GPUs
  two=$("$PY" -c "import json, sys; cells = [''.join(c['source']) for c in json.load(open(sys.argv[1]))['cells']]
print(any('#| cuda' in s and ('nproc_per_node' in s or 'num_processes' in s or 'config_file' in s)
          for s in cells))" "$nb")
  if [ "$two" = True ] && [ "$GPUS" -lt 2 ]; then echo "skipping $nb: its cuda cells need 2 GPUs"; continue; fi
  [ "$nb" = nbs/02_train.ipynb ] || NBS+=("$nb")
done
if [ "$CPU" = 1 ]; then FLAGS="cuda"; else FLAGS="cuda slow"; fi  # on a CPU the slow cells would take many minutes
for nb in "${NBS[@]}"; do run "notebook $nb" 150 "$(dirname "$PY")/nbdev_test" --flags "$FLAGS" --path "$nb"; done

step "2/4 CUDA tests"
run "cuda tests" 120 "$PY" -m pytest -q tests -k cuda  # every test about CUDA; those needing a GPU skip without one

step "3/4 one QLoRA step on the default model"
run "qlora step" 90 "$PY" - <<'EOF'
import importlib.util, sys, tempfile, time, torch
from gpt_finetune.data import default_data_path, tokenize_records
from gpt_finetune.formats import load_records
from gpt_finetune.model import ModelError, add_lora, load_model
from gpt_finetune.options import TrainConfig
from gpt_finetune.train import finetune
if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
    try: load_model(quantize=4); sys.exit("expected a one-line refusal without a GPU or bitsandbytes")
    except ModelError as e: print(f"skipped, as expected here: {e}"); sys.exit(0)
model, tok = load_model(quantize=4)
model = add_lora(model, r=8)
ds = tokenize_records(load_records(default_data_path()).records[:8], tok)
start = time.perf_counter()
stats = finetune(model, tok, ds, None, TrainConfig(output_dir=tempfile.mkdtemp(), epochs=1, batch_size=8, eval_every=0,
                                                   progress=False, save_every=0))
assert stats["steps"] == 1 and stats["final_train_loss"] == stats["final_train_loss"], stats  # one step, finite loss
print(f"QLoRA step: loss {stats['final_train_loss']:.3f}, {time.perf_counter() - start:.1f} s, "
      f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, attention {stats['attention']}")
EOF

step "4/4 training benchmark (tokens/s, MFU against the bf16 peak)"
run "benchmark default model" 120 "$PY" benchmarks/train_speed.py --setups gpt_finetune --out "" "${QUICK[@]}"
if [ "$CPU" = 1 ] && [ "${HF_HUB_OFFLINE:-0}" = 1 ]; then echo "skipping $HUB_MODEL: offline";
else run "benchmark $HUB_MODEL" 180 "$PY" benchmarks/train_speed.py --setups gpt_finetune --model "$HUB_MODEL" \
    --out "" "${QUICK[@]}"; fi

echo
if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: all steps passed"
else echo "gpu_check: FAILED: ${failed[*]}"; exit 1; fi
