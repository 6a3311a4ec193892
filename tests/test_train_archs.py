"GPT-2-style and Llama-style models train through the same `finetune`, with and without LoRA."
import pytest
import torch

from gpt_finetune.data import default_data_path, load_pairs, tokenize_records
from gpt_finetune.model import add_lora, merge_lora, tiny_model
from gpt_finetune.train import TrainConfig, finetune


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trains(arch, lora, tmp_path):
    model, tok = tiny_model(arch)
    records = load_pairs(default_data_path())
    train, valid = tokenize_records(records[:32], tok), tokenize_records(records[32:40], tok)
    if lora: model = add_lora(model, r=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=3, learning_rate=3e-3 if not lora else 1e-2, eval_every=4,
                      log_every=2, warmup=0, progress=False)
    stats = finetune(model, tok, train, valid, cfg)
    h = stats["history"]
    assert h.train[-1][1] < h.train[0][1], h.train  # it learns
    assert stats["final_eval_perplexity"] > 1 and 0 <= stats["final_eval_token_accuracy"] <= 1
    assert (tmp_path / "loss.png").exists()
    if lora:
        assert frozen, "LoRA freezes the base weights"
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
        x = torch.tensor([tok("Who wrote Hamlet?").input_ids])
        model.eval()
        with torch.no_grad(): before = model(x).logits
        plain = merge_lora(model)
        assert not hasattr(plain, "peft_config")
        with torch.no_grad(): torch.testing.assert_close(plain(x).logits, before, atol=1e-2, rtol=1e-3)  # fp32 rounding of the folded update
