"""Blend a finished run's saved model toward the base model as `finetune` does at the end of training (`blend`),
and score it like `benchmarks/quality.py` scores a run: `python blend_afterwards.py WORK SET SHARE SOURCE LABEL`.

`blend` changes nothing before the last step (the run trains, stops and keeps its best weights the same way), so
blending a saved model of the same recipe gives the weights the run would have saved. The figures a re-scoring
reads from the run (steps, training seconds) are the source run's."""
import json, shutil, subprocess, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import quality as Q
from gpt_finetune.model import load_model
from gpt_finetune.train import blend_weights, starting_weights

work, name, share, src, label = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
d, out = work / name, work / name / label
start = starting_weights(load_model()[0])  # the base model, as a run takes its copy before the first step
model, tok = load_model(d / src / "model")
blend_weights(model, start, share)
model.save_pretrained(out / "model"); tok.save_pretrained(out / "model")
metrics = json.loads((d / src / "metrics.json").read_text())
metrics["train"].update(blend=share, blended_afterwards_from=src)
(out / "metrics.json").write_text(json.dumps(metrics, indent=1))
subprocess.run([str(Q.BIN / "gpt-finetune"), "evaluate", "--model", str(out / "model"), "--baseline",
                str(d / "trl" / "model"), "--data", str(d / "test.jsonl"), "--output-dir", str(d / f"eval-{label}"),
                "--probe", "none"], check=True, env=Q._env(), stdout=open(d / f"eval-{label}.log", "w"),
               stderr=subprocess.STDOUT)
shutil.copy(d / f"eval-{src}" / "set_seconds.json", d / f"eval-{label}" / "set_seconds.json")  # the run's own time
row = Q.score_set(name, d, label, *Q.SETS[name][1:], [], probe_again=True)
print(Q.table([row]))
