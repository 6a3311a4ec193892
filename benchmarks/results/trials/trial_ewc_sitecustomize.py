# Trial patch (not shipped): elastic weight consolidation (Kirkpatrick et al., 2017) for gpt-finetune's training.
# Before training, the diagonal Fisher information of the base model is estimated on its own greedy answers to the
# shipped replay prompts (not the probe): F_i = mean over answers of (d log p(answer) / d w_i)^2, then scaled to mean 1.
# After every optimizer step each weight is pulled back toward its starting value by min(1, lr * GF_EWC * F_i) of the
# way: a decoupled, Fisher-weighted form of the L2-SP pull tried as GF_ANCHOR (which pulled every weight alike).
# Copy to a folder as sitecustomize.py and put that folder on PYTHONPATH with GF_EWC set.
import os

if os.environ.get("GF_EWC"):
    import time
    import torch
    import gpt_finetune.train as _train
    from transformers import TrainerCallback

    def _fisher(model, tokenizer) -> dict:
        from gpt_finetune.data import tokenize_records
        from gpt_finetune.replay import load_replay, replay_answers
        answers = [a for a in replay_answers(model, tokenizer, load_replay("default"))
                   if a["output"] and a["finish_reason"] == "stop"]
        rows = tokenize_records([{"input": a["input"], "output": a["output"]} for a in answers], tokenizer)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        was = model.training
        model.eval()
        for ids, labels in zip(rows["input_ids"], rows["labels"]):
            model.zero_grad(set_to_none=True)
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            out.loss.backward()  # the mean token log-likelihood of one answer: one sample of the empirical Fisher
            for n, p in params.items():
                if p.grad is not None: fisher[n] += p.grad.float() ** 2
        model.zero_grad(set_to_none=True)
        model.train(was)
        mean = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
        print(f"EWC: Fisher from {len(rows)} replay answers", flush=True)
        return {n: f / mean for n, f in fisher.items()}

    class _EWCPull(TrainerCallback):
        def __init__(self, model, fisher: dict, strength: float):
            self.fisher, self.strength = fisher, strength
            self.start = {n: p.detach().float().clone() for n, p in model.named_parameters() if n in fisher}

        @torch.no_grad()
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            lr = optimizer.param_groups[0]["lr"]
            for n, p in model.named_parameters():
                if n in self.fisher:
                    w = (lr * self.strength * self.fisher[n]).clamp_(max=1.0)
                    p.copy_((p.float() + w * (self.start[n] - p.float())).to(p.dtype))

    _finetune = _train.finetune

    def finetune(model, tokenizer, *a, callbacks=None, **k):
        t = time.perf_counter()
        pull = _EWCPull(model, _fisher(model, tokenizer), float(os.environ["GF_EWC"]))
        print(f"EWC: Fisher in {time.perf_counter() - t:.0f} s, strength {pull.strength:g}", flush=True)
        return _finetune(model, tokenizer, *a, callbacks=[*(callbacks or []), pull], **k)

    _train.finetune = finetune
