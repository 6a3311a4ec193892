"""Hostile model folders: an adapter folder is checked like a model folder (its pickle `adapter_model.bin` is refused
unless `--allow-pickle`), and a malformed `config.json` (generate, serve), a malformed `adapter_config.json` or one
that names no base model is one line naming the file, exit status 2, never a traceback. Each case goes through the real
`gpt-finetune` entry point on tiny random models."""
import json, shutil

import pytest
import torch
from safetensors.torch import load_file

from gpt_finetune.cli import main
from gpt_finetune.deploy import save_model
from gpt_finetune.model import ModelError, add_lora, load_model, tiny_model
from gpt_finetune.serve import free_port


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    "A tiny Llama saved as a model folder, and a LoRA adapter folder that names it as its base."
    root = tmp_path_factory.mktemp("folders")
    model, tok = tiny_model("llama")
    base = save_model(model, tok, root / "base", base_model="tiny-llama")
    adapter = save_model(add_lora(tiny_model("llama")[0]), tok, root / "adapter", base_model=str(base),
                         adapter_only=True)
    return base, adapter


def copy(src, tmp_path, name):
    return shutil.copytree(src, tmp_path / name)


def one_line(capsys, *argv) -> str:
    "Run `gpt-finetune ARGV`; assert that it failed with status 2 and one line on stderr; return that line."
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err[-2000:]
    return err


def generate(capsys, folder, *more):
    return one_line(capsys, "generate", "--model", folder, "--max-tokens", 2, *more, "Hi")


def test_pickle_adapter_is_refused_unless_allowed(folders, tmp_path, capsys):
    _, adapter = folders
    pickled = copy(adapter, tmp_path, "pickled")
    weights = load_file(pickled / "adapter_model.safetensors")
    (pickled / "adapter_model.safetensors").unlink()
    torch.save(weights, pickled / "adapter_model.bin")  # a real adapter, in the format that can run code on load
    err = generate(capsys, pickled)
    assert "--allow-pickle" in err and str(pickled) in err
    with pytest.raises(ModelError, match="--allow-pickle"): load_model(pickled)  # the training/evaluation path too
    assert main(["generate", "--model", str(pickled), "--allow-pickle", "--max-tokens", "2", "Hi"]) == 0


def test_pickle_adapter_payload_never_runs(folders, tmp_path, capsys):
    "A pickle whose loading would run a command: refused before anything is unpickled."
    _, adapter = folders
    evil, ran = copy(adapter, tmp_path, "evil"), tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self): return (open, (str(ran), "w"))

    (evil / "adapter_model.safetensors").unlink()
    torch.save({"x": Payload()}, evil / "adapter_model.bin")
    assert "--allow-pickle" in generate(capsys, evil)
    assert not ran.exists()


@pytest.mark.parametrize("text,why", [('{"base_model_name_or_path": ', "adapter_config.json:1: not valid JSON"),
                                      ("[]", "adapter_config.json: expected a JSON object, found a list"),
                                      ("\xff\xfe{", "adapter_config.json"),
                                      ('{"peft_type": "LORA"}', "adapter_config.json: no base_model_name_or_path"),
                                      ('{"base_model_name_or_path": 7}', "no base_model_name_or_path")])
def test_bad_adapter_config_is_one_line(folders, tmp_path, capsys, text, why):
    _, adapter = folders
    bad = copy(adapter, tmp_path, "bad-adapter")
    (bad / "adapter_config.json").write_bytes(text.encode("latin-1"))
    assert why in generate(capsys, bad)
    with pytest.raises(ModelError, match="adapter_config.json"): load_model(bad)  # run/evaluate load this way


@pytest.mark.parametrize("text,why", [('{"model_type": "llama",\n "vocab_size": 1000,,\n}', "config.json:2: not valid"),
                                      ('"llama"', "config.json: expected a JSON object, found a str"),
                                      ("[" * 100_000, "config.json: cannot read")])
def test_bad_config_json_is_one_line_for_generate(folders, tmp_path, capsys, text, why):
    base, _ = folders
    bad = copy(base, tmp_path, "bad-config")
    (bad / "config.json").write_text(text)
    assert why in generate(capsys, bad)


def test_bad_config_json_is_one_line_for_serve(folders, tmp_path, capsys, monkeypatch):
    base, _ = folders
    bad = copy(base, tmp_path, "bad-config")
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": }')
    monkeypatch.setenv("GPT_FINETUNE_API_KEY", "sk-test")
    err = one_line(capsys, "serve", "--model", bad, "--port", free_port())
    assert f"{bad / 'config.json'}:1: not valid JSON" in err


def test_bad_generation_config_is_one_line(folders, tmp_path, capsys):
    "The adapter path reads generation_config.json itself: a malformed one is named too."
    _, adapter = folders
    bad = copy(adapter, tmp_path, "bad-generation-config")
    (bad / "generation_config.json").write_text("{'eos_token_id': 2}")
    assert "generation_config.json:1: not valid JSON" in generate(capsys, bad)


def test_good_folders_still_load(folders, capsys):
    base, adapter = folders
    for folder in (base, adapter):
        assert main(["generate", "--model", str(folder), "--max-tokens", "2", "Hi"]) == 0
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
