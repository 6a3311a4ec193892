"""Trial (not shipped): on-policy self-distillation ("Self-Distillation Enables Continual Learning", 2026).

The model is its own teacher: shown the question with the reference answer as an example, it scores the answers it
writes itself to the bare question. Each step samples one answer per question from the model as it is now (the
student, temperature 1), then trains the student's next-token distribution at every sampled position toward the
teacher's at the same position (reverse KL, over the whole vocabulary; the teacher's side carries no gradient). The
reference is never a training target, so no token the model would not itself write is forced on it.

    python onpolicy_sd.py TRAIN.jsonl OUT_DIR [--epochs 3] [--lr 5e-5] [--batch 8] [--max-new 48] [--seed 42]
"""
import argparse, json, math, random, time
from pathlib import Path

import torch
from gpt_finetune.data import encode_prompts, render_chat, stop_token_ids
from gpt_finetune.generation import left_pad
from gpt_finetune.model import load_model

TEACHER = "{q}\n\nExample of a good answer: {a}\n\nNow give your own answer to the question."


def prompt_ids(tok, texts: list[str]) -> list[list[int]]:
    return encode_prompts(tok, [render_chat(tok, [{"role": "user", "content": t}]) for t in texts])


@torch.no_grad()
def sample_answers(model, tok, prompts: list[list[int]], stops: list[int], max_new: int) -> list[list[int]]:
    "One sampled answer per prompt, as token ids, up to and including its end-of-turn token (if it ended)."
    batch = left_pad(prompts, tok.pad_token_id or 0)
    out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new,
                         eos_token_id=stops, pad_token_id=tok.pad_token_id or 0)
    answers = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        ends = [i for i, t in enumerate(row) if t in stops]
        answers.append(row[:ends[0] + 1] if ends else row)
    return answers


def answer_logits(model, prefixes: list[list[int]], answers: list[list[int]]) -> list[torch.Tensor]:
    "For each row, the logits that predict its answer's tokens (one row per answer token)."
    rows = [p + a for p, a in zip(prefixes, answers)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    logits = model(input_ids=ids, attention_mask=mask).logits
    return [logits[i, len(p) - 1:len(p) + len(a) - 1] for i, (p, a) in enumerate(zip(prefixes, answers))]


def reverse_kl(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    "Mean over every answer token of KL(student || teacher), each over the whole vocabulary."
    s, t = torch.cat(student).float().log_softmax(-1), torch.cat(teacher).float().log_softmax(-1)
    return (s.exp() * (s - t)).sum(-1).mean()


def train(records: list[dict], out: Path, epochs: int, lr: float, batch: int, max_new: int, seed: int) -> dict:
    random.seed(seed); torch.manual_seed(seed)
    model, tok = load_model()
    stops = stop_token_ids(tok)
    order = [r for _ in range(epochs) for r in random.sample(records, len(records))]
    steps = math.ceil(len(order) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                              * (1 - s / steps))
    log, start = [], time.perf_counter()
    for step in range(steps):
        part = order[step * batch:(step + 1) * batch]
        student_p = prompt_ids(tok, [r["input"] for r in part])
        teacher_p = prompt_ids(tok, [TEACHER.format(q=r["input"], a=r["output"]) for r in part])
        model.eval(); answers = sample_answers(model, tok, student_p, stops, max_new)
        with torch.no_grad(): teacher = answer_logits(model, teacher_p, answers)
        model.train(); loss = reverse_kl(answer_logits(model, student_p, answers), teacher)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
        log.append({"step": step + 1, "kl": round(loss.item(), 4),
                    "answer_tokens": sum(map(len, answers)) / len(answers), "sample": tok.decode(answers[0])})
        print(json.dumps(log[-1], ensure_ascii=False), flush=True)
    model.eval(); model.save_pretrained(out / "model"); tok.save_pretrained(out / "model")
    info = {"steps": steps, "epochs": epochs, "lr": lr, "batch": batch, "max_new": max_new, "seed": seed,
            "seconds": round(time.perf_counter() - start, 1), "log": log}
    (out / "onpolicy_sd.json").write_text(json.dumps(info, ensure_ascii=False, indent=1))
    return info


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("train"); p.add_argument("out")
    p.add_argument("--epochs", type=int, default=3); p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=8); p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    recs = [json.loads(l) for l in open(a.train, encoding="utf-8") if l.strip()]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    info = train(recs, Path(a.out), a.epochs, a.lr, a.batch, a.max_new, a.seed)
    print(f"{info['steps']} steps in {info['seconds']} s")
