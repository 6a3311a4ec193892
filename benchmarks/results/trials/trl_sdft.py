"""Trial (not shipped): on-policy self-distillation with TRL's own implementation (`trl.experimental.sdft`).

TRL's `SDFTTrainer` with its `SDFTConfig` defaults (the frozen base model as teacher, top-100 logit distillation,
8 sampled answers per question at temperature 1, learning rate 5e-5), except what a CPU run needs: float32 (no bf16
autocast), answers up to 64 tokens (not 256) and one epoch. The teacher sees the question followed by the reference
answer as an example; the student sees the question alone.

    python trl_sdft.py TRAIN.jsonl OUT_DIR
    python trl_sdft.py TRAIN.jsonl OUT.json --teacher-answers   # what the teacher itself answers, greedily
"""
import json, sys
from datasets import Dataset
from trl.experimental.sdft import SDFTConfig, SDFTTrainer
from gpt_finetune.model import best_device, load_model, quiet_progress_bars

CONTEXT = "Example of a good answer: {a}\n\nNow give your own answer to the question."
TEMPLATE = SDFTConfig.__dataclass_fields__["teacher_prompt_template"].default  # the trainer's own


def teacher_prompt(r: dict) -> str:
    return TEMPLATE.format(prompt=r["input"], privileged_context=CONTEXT.format(a=r["output"]))


def teacher_answers(rows: list[dict], out: str):
    "The base model's greedy answers to the teacher's prompt, and how many are the reference word for word."
    from gpt_finetune.deploy import chat
    from gpt_finetune.metrics import normalize_answer
    model, tok = load_model()
    convs = [[{"role": "user", "content": teacher_prompt(r)}] for r in rows]
    answers = chat(model, tok, convs, max_new_tokens=64)
    same = sum(normalize_answer(a) == normalize_answer(r["output"]) for a, r in zip(answers, rows))
    result = {"records": len(rows), "teacher_answer_is_reference": same,
              "answers": [{"input": r["input"], "reference": r["output"], "teacher": a} for r, a in zip(rows, answers)]}
    open(out, "w", encoding="utf-8").write(json.dumps(result, ensure_ascii=False, indent=1))
    print(f"{same} of {len(rows)} teacher answers are the reference")


if __name__ == "__main__":
    quiet_progress_bars()
    train, out = sys.argv[1], sys.argv[2]
    rows = [json.loads(l) for l in open(train, encoding="utf-8") if l.strip()]
    if "--teacher-answers" in sys.argv: teacher_answers(rows, out); sys.exit()
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["input"]}],
                             "privileged_context": CONTEXT.format(a=r["output"])} for r in rows])
    model, tok = load_model()
    args = SDFTConfig(output_dir=out + "/trainer", use_cpu=best_device() == "cpu", report_to="none",
                      save_strategy="no", bf16=False, max_completion_length=64, num_train_epochs=1,
                      logging_steps=5)
    trainer = SDFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=args)
    trainer.train()
    trainer.save_model(out + "/model"); tok.save_pretrained(out + "/model")
