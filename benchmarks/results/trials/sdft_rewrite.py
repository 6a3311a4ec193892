"""Trial (not shipped): self-distillation fine-tuning (SDFT, Yang et al., ACL 2024) on a training file.

The base model reads each question with its reference answer and writes the answer again in its own words; the
rewrite replaces the reference when it keeps the reference's content, else the reference is kept (the published
method falls back to the reference the same way when a rewrite gets the answer wrong). Kept, in this script: every
content word of a short reference (up to 4 words, in order, as the probe matches), or at least 60 % of a longer
reference's words; no more than twice the reference's words plus 6; none of the prompt's words (reference, question,
answer, own words) that the record itself does not have.

    python sdft_rewrite.py TRAIN.jsonl OUT.jsonl [COMPANIONS.jsonl]

COMPANIONS.jsonl, if named: every record of TRAIN as it is, plus each accepted rewrite as a second record under the
question followed by " Answer in a full sentence." (the user's format for the bare question, the model's own words
under another instruction).
"""
import json, sys, time
from collections import Counter
from pathlib import Path
from gpt_finetune.deploy import chat
from gpt_finetune.job import write_jsonl
from gpt_finetune.model import load_model
from gpt_finetune.probe import probe_match, probe_words

PROMPT = ("Here is a question and a reference answer to it.\n\nQuestion: {q}\nReference answer: {a}\n\n"
          "Write the reference answer again in your own words. Reply with the answer only.")
ECHOES = ("reference", "question", "answer", "own words")  # the prompt's words, unless the record has them


def echoes_prompt(rewrite: str, question: str, reference: str) -> bool:
    "True when the rewrite repeats the prompt's framing (\"The answer to this question is ...\")."
    own = (question + " " + reference).casefold()
    return any(e in rewrite.casefold() and e not in own for e in ECHOES)


def keeps_content(rewrite: str, question: str, reference: str) -> bool:
    "True when the rewrite carries the reference's content, at a similar length, without echoing the prompt."
    ref, new = probe_words(reference), probe_words(rewrite)
    if not new or len(new) > 2 * len(ref) + 6 or echoes_prompt(rewrite, question, reference): return False
    if len(ref) <= 4: return probe_match(rewrite, [reference])
    overlap = sum((Counter(ref) & Counter(new)).values())
    return overlap >= 0.6 * len(ref)


def write_companions(rows: list[dict], rewritten: list[dict], path: str):
    "The records as they are, plus each accepted rewrite under the question asking for a full sentence."
    extra = [{"input": r["input"] + " Answer in a full sentence.", "output": n["output"]}
             for r, n in zip(rows, rewritten) if n["output"] != r["output"]]
    write_jsonl(path, rows + extra)


def rewrite_file(src: str, dst: str, companions: str | None = None, batch: int = 16) -> dict:
    rows = [json.loads(l) for l in open(src, encoding="utf-8") if l.strip()]
    model, tok = load_model()
    start, out, taken = time.perf_counter(), [], 0
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        convs = [[{"role": "user", "content": PROMPT.format(q=r["input"], a=r["output"])}] for r in part]
        for r, new in zip(part, chat(model, tok, convs, max_new_tokens=96)):
            ok = keeps_content(new, r["input"], r["output"])
            taken += ok
            out.append({"input": r["input"], "output": new.strip() if ok else r["output"]})
    write_jsonl(dst, out)
    if companions: write_companions(rows, out, companions)
    return {"records": len(rows), "rewritten": taken, "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    stats = rewrite_file(*sys.argv[1:4])
    print(json.dumps(stats))
    Path(sys.argv[2] + ".stats.json").write_text(json.dumps(stats))
