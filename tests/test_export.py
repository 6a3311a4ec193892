"""GGUF export round trip: write a file, load it back with transformers alone, compare with the source model.

The slow test on the default model runs only with GPT_FINETUNE_SLOW=1 (it loads the 135M model twice, ~1 minute).
"""
import contextlib, io, json, os, shutil

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from gpt_finetune.export import export_gguf
from gpt_finetune.model import ModelError, tiny_model

TEXTS = ["Hello world", "Grüße, 世界! 🤗 naïve café", "  two  spaces\nand\ttabs 12345",
         "<|im_start|>user\nWhere is Paris?<|im_end|>\n"]


def load_gguf(path):
    "Model and tokenizer rebuilt from the GGUF file alone (its folder holds nothing else)."
    with contextlib.redirect_stderr(io.StringIO()):
        return (AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))


def greedy(model, tok, ids, n=16):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A tiny random Llama with a real BPE tokenizer and ChatML template, saved as a folder."
    model, tok = tiny_model("llama")
    path = tmp_path_factory.mktemp("src") / "tiny-llama"
    model.save_pretrained(path); tok.save_pretrained(path)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Where is Paris?"}],
                                                add_generation_prompt=True)["input_ids"]])
    with torch.no_grad(): logits = model(ids).logits
    return dict(model=model.eval(), tok=tok, dir=path, ids=ids, logits=logits, answer=greedy(model, tok, ids))


@pytest.mark.parametrize("out_type,tol", [("f32", 0.0), ("f16", 2e-3), ("q8_0", 5e-2)])
def test_round_trip(tiny, tmp_path, out_type, tol):
    out = export_gguf(tiny["dir"], tmp_path / f"tiny-{out_type}.gguf", out_type)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partial file left behind
    model, tok = load_gguf(out)
    with torch.no_grad(): logits = model(tiny["ids"]).logits
    diff = (logits - tiny["logits"]).abs().max().item()
    assert diff <= tol, (out_type, diff)
    if out_type != "f32": assert diff > 0  # really rounded: the type is honoured
    if out_type != "q8_0": assert greedy(model, tok, tiny["ids"]) == tiny["answer"]
    src = tiny["tok"]
    for text in TEXTS:
        assert tok.encode(text) == src.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.chat_template == src.chat_template
    specials = lambda t: (t.bos_token, t.eos_token, t.pad_token, t.unk_token)
    assert specials(tok) == specials(src)


def test_file_layout(tiny, tmp_path):
    "Metadata llama.cpp needs, tied output omitted, norms in f32, Q and K rows in llama.cpp's order."
    out = export_gguf(tiny["dir"], tmp_path / "tiny.gguf", "q8_0")
    r = gguf.GGUFReader(out)
    field = lambda k: r.fields[k].contents()
    cfg = tiny["model"].config
    assert field("general.architecture") == "llama" and field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert [field(f"llama.{k}") for k in ("block_count", "embedding_length", "feed_forward_length")] == [2, 64, 128]
    assert (field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (4, 2)
    assert field("llama.context_length") == 512 and field("llama.vocab_size") == 1000
    assert field("llama.rope.freq_base") == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    assert field("tokenizer.ggml.add_bos_token") is False and len(field("tokenizer.ggml.merges")) > 100
    tok = tiny["tok"]
    assert field("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field("tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert field("tokenizer.ggml.token_type")[tok.eos_token_id] == gguf.TokenType.CONTROL
    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors and len(tensors) == len(tiny["model"].state_dict()) - 1
    assert {t.tensor_type for n, t in tensors.items() if n.endswith("norm.weight")} == {gguf.GGMLQuantizationType.F32}
    k = gguf.quants.dequantize(tensors["blk.0.attn_k.weight"].data, gguf.GGMLQuantizationType.Q8_0)
    hf_k = tiny["model"].model.layers[0].self_attn.k_proj.weight.detach().numpy()  # 2 KV heads of 16 rows
    order = np.concatenate([h * 16 + np.stack([np.arange(8), np.arange(8) + 8], 1).ravel() for h in range(2)])
    np.testing.assert_allclose(k, hf_k[order], atol=np.abs(hf_k).max() / 100)  # rotary halves -> neighbours


def test_untied_output_and_bf16(tiny, tmp_path):
    "A model whose output layer is its own matrix gets output.weight; bf16 reloads within bf16 rounding."
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256, vocab_size=1000, tie_word_embeddings=False,
                      rope_theta=5e5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    src = tmp_path / "untied"
    model.save_pretrained(src); tiny["tok"].save_pretrained(src)
    out = export_gguf(src, tmp_path / "out" / "untied.gguf", "bf16")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(out).tensors}
    back, _ = load_gguf(out)
    with torch.no_grad(): a, b = model(tiny["ids"]).logits, back(tiny["ids"]).logits
    assert 0 < (a - b).abs().max().item() < 2e-2


def test_default_output_name(tiny, tmp_path):
    src = tmp_path / "my-model"
    shutil.copytree(tiny["dir"], src)
    out = export_gguf(src)
    assert out == tmp_path / "my-model-F16.gguf" and out.stat().st_size > 0


def one_line_error(fn) -> str:
    with pytest.raises(ModelError) as e: fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_refusals(tiny, tmp_path):
    gpt2 = tmp_path / "gpt2"
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(gpt2)
    msg = one_line_error(lambda: export_gguf(gpt2, tmp_path / "x.gguf"))
    assert str(gpt2) in msg and "'gpt2'" in msg and "Llama" in msg
    assert not (tmp_path / "x.gguf").exists()
    assert "unknown GGUF type 'q4_k'" in one_line_error(lambda: export_gguf(tiny["dir"], tmp_path / "x.gguf", "q4_k"))
    assert "no such model folder" in one_line_error(lambda: export_gguf(tmp_path / "missing"))
    adapter = tmp_path / "adapter"; adapter.mkdir(); (adapter / "adapter_config.json").write_text("{}")
    assert "LoRA adapter" in one_line_error(lambda: export_gguf(adapter))
    odd = tmp_path / "odd-tokenizer"
    shutil.copytree(tiny["dir"], odd)
    tj = json.loads((odd / "tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    assert "no llama.cpp equivalent" in one_line_error(lambda: export_gguf(odd, tmp_path / "odd.gguf"))
    assert not (tmp_path / "odd.gguf").exists() and not list(tmp_path.glob(".*.partial"))


@pytest.mark.skipif(os.environ.get("GPT_FINETUNE_SLOW") != "1", reason="slow: set GPT_FINETUNE_SLOW=1")
def test_default_model_q8_0(tmp_path):
    from gpt_finetune.data import prompt_text
    from gpt_finetune.model import fetch_default_model, load_model
    src = fetch_default_model()
    out = export_gguf(src, tmp_path / "smollm2-q8_0.gguf", "q8_0")
    assert 0.2 < out.stat().st_size / (src / "model.safetensors").stat().st_size < 0.3  # 8.5 of 32 bits
    model, tok = load_model(src)
    back, back_tok = load_gguf(out)
    ids = torch.tensor([tok.encode(prompt_text(tok, "What is the capital of France?"))])
    assert back_tok.encode(prompt_text(tok, "What is the capital of France?")) == ids[0].tolist()
    with torch.no_grad(): a, b = model(ids).logits, back(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    assert (a - b).abs().mean() < 0.02 * a.abs().max()
    assert tok.decode(greedy(back, back_tok, ids, 12)) == tok.decode(greedy(model, tok, ids, 12))


def test_name_license_and_base_model_come_from_the_card(tiny, tmp_path):
    "A fine-tune of the default model saved by save_model: the GGUF names it after its base, with the base's license."
    from gpt_finetune.deploy import save_model
    src = save_model(tiny["model"], tiny["tok"], tmp_path / "model", base_model="default")  # what `run` writes
    r = gguf.GGUFReader(export_gguf(src, tmp_path / "model-Q8_0.gguf", "q8_0"))
    field = lambda k: r.fields[k].contents() if k in r.fields else None
    assert field("general.name") == "SmolLM2-135M-Instruct fine-tuned"
    assert field("general.license") == "apache-2.0"
    assert (field("general.base_model.count"), field("general.base_model.0.name"),
            field("general.base_model.0.organization")) == (1, "SmolLM2-135M-Instruct", "HuggingFaceTB")
    plain = gguf.GGUFReader(export_gguf(tiny["dir"], tmp_path / "plain.gguf", "q8_0"))  # no card: the folder's name
    assert plain.fields["general.name"].contents() == "tiny-llama" and "general.license" not in plain.fields
