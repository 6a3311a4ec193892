"""Packing several examples into one row (position ids restarting per example) gives every example the same
loss as training on it alone: no example attends to another. Checked on tiny random Llama and GPT-2 models."""
import pytest
import torch
import torch.nn.functional as F

from gpt_finetune.data import PackedCollator, PaddedCollator, length_grouped_batches, tokenize_records
from gpt_finetune.model import tiny_model

RECORDS = [{"input": "What is AI?", "output": "Artificial intelligence: machines that learn."},
           {"input": "Who wrote Hamlet?", "output": "Shakespeare"},
           {"input": "Hi", "output": "Hello there, friend. How are you today?"},
           {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                         {"role": "user", "content": "And Paris?"},
                         {"role": "assistant", "content": "The capital of France."}],
            "input": "And Paris?", "output": "The capital of France."}]


def _example_losses(logits, labels, lengths):
    "Mean answer-token loss of each example in a row of concatenated examples."
    out, start = [], 0
    for n in lengths:
        lg, lb = logits[start:start + n - 1], labels[start + 1:start + n]
        out.append(F.cross_entropy(lg, lb, ignore_index=-100))
        start += n
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_loss_equals_unpacked(arch):
    model, tok = tiny_model(arch)
    model.eval()  # no dropout: packed and alone must agree exactly up to float error
    ds = tokenize_records(RECORDS, tok)
    feats = [ds[i] for i in range(len(ds))]
    batch = PackedCollator()(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = [model(torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]), use_cache=False).loss
                 for f in feats]
    torch.testing.assert_close(_example_losses(packed, batch["labels"][0], lengths), torch.stack(alone),
                               atol=1e-5, rtol=1e-5)


def test_packing_needs_use_cache_false():
    "With a KV cache, transformers does not read restarting positions as boundaries: the examples mix."
    model, tok = tiny_model("llama")
    model.eval()
    feats = [f for f in tokenize_records(RECORDS[:2], tok)]
    batch = PackedCollator()(feats)
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        second = model(torch.tensor([feats[1]["input_ids"]]), use_cache=False).logits[0]
    assert (cached[len(feats[0]["input_ids"]):] - second).abs().max() > 1e-2


def test_bucketed_padded_loss_equals_unpacked():
    model, tok = tiny_model("llama")
    model.eval()
    ds = tokenize_records(RECORDS, tok)
    for idx in length_grouped_batches(ds["length"], batch_size=2, seed=1):
        batch = PaddedCollator(tok.pad_token_id)([ds[i] for i in idx])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            for row, i in enumerate(idx):
                n = ds[i]["length"]
                alone = model(torch.tensor([ds[i]["input_ids"]]), labels=torch.tensor([ds[i]["labels"]])).loss
                torch.testing.assert_close(_example_losses(logits[row], batch["labels"][row], [n])[0], alone,
                                           atol=1e-5, rtol=1e-5)
