# Trial patch (not shipped): NEFTune embedding noise for gpt-finetune's training, alpha from GF_NEFTUNE.
import os
if os.environ.get("GF_NEFTUNE"):
    import transformers
    _init = transformers.TrainingArguments.__init__
    def __init__(self, *a, **k):
        k.setdefault("neftune_noise_alpha", float(os.environ["GF_NEFTUNE"]))
        _init(self, *a, **k)
    transformers.TrainingArguments.__init__ = __init__
