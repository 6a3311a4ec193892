# Trial patch (not shipped): the best-weights record treats a validation loss within GF_TOLERANCE (relative) of the
# lowest so far as just as good and keeps the later weights; the extension gate (best step == planned last) follows.
import os
if os.environ.get("GF_TOLERANCE"):
    import math
    from gpt_finetune import curves
    _tol = float(os.environ["GF_TOLERANCE"])

    def on_evaluate(self, args, state, control, metrics=None, model=None, optimizer=None, **kwargs):
        if not metrics or "eval_loss" not in metrics or model is None: return
        loss, lowest = metrics["eval_loss"], getattr(self, "lowest", math.inf)
        if loss <= lowest * (1 + _tol):  # within the tolerance of the lowest: the later weights are kept
            self.bad = 0 if loss < lowest else self.bad + 1
            self.lowest = min(loss, lowest)
            self.best, self.step, self.metrics = loss, state.global_step, dict(metrics)
            opt = getattr(optimizer, "optimizer", optimizer)
            full = getattr(opt, "full_precision", lambda p: p.detach())  # master weights, if any
            self.weights = {n: full(p).to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.bad += 1
        if self.patience and self.bad >= self.patience: control.should_training_stop = True
    curves.BestWeights.on_evaluate = on_evaluate
