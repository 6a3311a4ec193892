"""Examples packed into one row never attend to each other, through the attention kernel `finetune` picks:
the packed answer loss equals the sum of each example's loss alone, and changing one example's tokens leaves the
next example's logits untouched, whether attention runs on each example alone (`packed_sdpa`) or on the row
with a block-diagonal mask. The same checks run on CUDA (bf16, flash-attention 2 when installed) when a GPU
is present."""
import importlib.util

import pytest
import torch

from gpt_finetune.data import PackedCollator, default_data_path, tokenize_records
from gpt_finetune.formats import load_records
from gpt_finetune.model import tiny_model
from gpt_finetune.train import answer_loss_sum, packed_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _examples(tok, n=5):
    return [f for f in tokenize_records(load_records(default_data_path()).records[:n], tok)]


def _check_boundaries(model, feats, device, tol):
    batch = {k: v.to(device) for k, v in PackedCollator()(feats).items()}
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        packed, n, _ = answer_loss_sum(model, batch)
        alone = [answer_loss_sum(model, {k: v.to(device) for k, v in PackedCollator()([f]).items()}) for f in feats]
        assert n == sum(a[1] for a in alone)
        torch.testing.assert_close(packed.float(), sum(a[0] for a in alone).float(), atol=tol * n, rtol=tol)
        # change every token of the first example: the logits of the others must not move
        ids = batch["input_ids"].clone(); k = len(feats[0]["input_ids"])
        ids[0, 1:k] = (ids[0, 1:k] + 7) % model.config.vocab_size
        a = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0, k:]
        b = model(input_ids=ids, position_ids=batch["position_ids"], use_cache=False).logits[0, k:]
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("arch,attn,kernel", [("llama", "sdpa", "packed_sdpa"), ("llama", "eager", "eager"),
                                              ("gpt2", "sdpa", "packed_sdpa")])
def test_packed_examples_stay_apart_on_cpu(arch, attn, kernel):
    model, tok = tiny_model(arch)
    model.set_attn_implementation(attn); model.eval()
    assert packed_attention(model, "cpu") == kernel  # SDPA becomes per-example SDPA; eager keeps its mask
    _check_boundaries(model, _examples(tok), "cpu", 1e-5)


def test_per_example_attention_is_taken_and_matches_the_mask():
    "The per-example path runs on a packed row and gives the masked kernel's loss and gradients."
    from gpt_finetune import train
    model, tok = tiny_model("llama")
    batch = PackedCollator(pad_to_multiple_of=64)(_examples(tok, 8))
    grads = {}
    for kernel in ("sdpa", "packed_sdpa"):
        model.set_attn_implementation(kernel); model.zero_grad()
        loss, _, _ = answer_loss_sum(model, batch)
        loss.backward()
        grads[kernel] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert train._PLAN[2] is not None and train._PLAN[2][0].shape[0] >= 9  # eight examples and the padding
    torch.testing.assert_close(grads["packed_sdpa"][0], grads["sdpa"][0])
    torch.testing.assert_close(grads["packed_sdpa"][1], grads["sdpa"][1], atol=1e-5, rtol=1e-4)


def test_one_long_example_among_short_ones_keeps_the_mask():
    "Padding every example to the longest would cost more than the mask: the full masked kernel runs, still apart."
    from gpt_finetune import train
    model, tok = tiny_model("llama"); model.eval()
    feats = _examples(tok, 4)
    long = dict(feats[0]); long["input_ids"] = (long["input_ids"] * 12)[:400]
    long["labels"] = (long["labels"] * 12)[:400]
    packed_attention(model, "cpu")
    _check_boundaries(model, [long] + feats[1:], "cpu", 1e-5)
    assert train._PLAN[2] is None


def test_the_kernel_is_restored_after_finetune(tmp_path):
    from gpt_finetune.options import TrainConfig
    from gpt_finetune.train import finetune
    model, tok = tiny_model("llama")
    ds = tokenize_records(load_records(default_data_path()).records[:16], tok)
    stats = finetune(model, tok, ds, None, TrainConfig(output_dir=str(tmp_path), epochs=1, batch_size=8,
                                                        progress=False, eval_every=0))
    assert stats["attention"] == "packed_sdpa" and model.config._attn_implementation == "sdpa"


def test_without_boundaries_the_examples_mix():
    "The check can fail: the same row with plain consecutive positions lets later examples see earlier ones."
    model, tok = tiny_model("llama"); model.eval()
    feats = _examples(tok, 2)
    batch = PackedCollator()(feats)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        packed, _, _ = answer_loss_sum(model, batch)
        alone = sum(answer_loss_sum(model, PackedCollator()([f]))[0] for f in feats)
    assert abs(packed - alone) > 1e-3


@cuda
def test_packed_examples_stay_apart_on_cuda():
    model, tok = tiny_model("llama")
    model.to("cuda").eval()
    impl = packed_attention(model, "cuda")
    assert impl == ("flash_attention_2" if importlib.util.find_spec("flash_attn") else "packed_sdpa")
    _check_boundaries(model, _examples(tok), "cuda", 2e-2)
