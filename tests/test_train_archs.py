"GPT-2-style and Llama-style models train through the same `finetune`, with and without LoRA."
import pytest
import torch

from gpt_finetune.data import default_data_path, tokenize_records
from gpt_finetune.formats import load_records
from gpt_finetune.model import add_lora, merge_lora, tiny_model
from gpt_finetune.options import TrainConfig
from gpt_finetune.train import finetune


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trains(arch, lora, tmp_path):
    model, tok = tiny_model(arch)
    records = load_records(default_data_path()).records
    train, valid = tokenize_records(records[:32], tok), tokenize_records(records[32:40], tok)
    if lora: model = add_lora(model, r=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=3, learning_rate=3e-3 if not lora else 1e-2, eval_every=4,
                      log_every=2, warmup=0, extend_epochs=0, progress=False)  # the planned passes only
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
        # fp32 rounding of the folded update
        with torch.no_grad(): torch.testing.assert_close(plain(x).logits, before, atol=1e-2, rtol=1e-3)


def test_bf16_weights_keep_updates_smaller_than_bf16_resolution(tmp_path):
    "bf16 compute weights, float32 master weights: updates far below bf16's rounding step still reach the saved model."
    model, tok = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = tokenize_records(load_records(default_data_path()).records[:16], tok)
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=1, batch_size=8, learning_rate=1e-6, warmup=0,
                      scheduler="constant", eval_every=0, progress=False, precision="bf16", bf16_weights="on",
                      save_every=0)
    stats = finetune(model, tok, ds, None, cfg)
    assert stats["bf16_weights"] and stats["steps"] == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller gets a float32 model back
    w, w0 = model.model.layers[0].mlp.up_proj.weight.detach(), before["model.layers.0.mlp.up_proj.weight"]
    step = (w - w0).abs()
    assert (step > 0).float().mean() > 0.9  # nearly every weight moved...
    # ...by less than half a bf16 step: kept only by the masters
    assert (step < w0.abs() * 2 ** -9).float().mean() > 0.9
