"""Decoding settings with SmolLM2's real tokenizer and tiny random models: penalties and bias follow OpenAI's formulas,
log-probabilities are the shaped scores', JSON output always parses and follows its schema, and a setting that
cannot be honoured is refused in one line that names its field."""
import json, math, threading

import jsonschema
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpt_finetune.data import encode_prompts, prompt_text
from gpt_finetune.decoding import SCHEMA_PARAM, ShapeError, Shaper, _ll_tokenizer, make_shaper, penalize
from gpt_finetune.generation import generate_ids
from gpt_finetune.model import load_tokenizer, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: tiny models on a shared CPU


@pytest.fixture(scope="module")
def real_tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def wide(real_tok):
    "A tiny random Llama with the real tokenizer's 49,152-token vocabulary."
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(real_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


def rows_of(tok, questions):
    return encode_prompts(tok, [prompt_text(tok, q) for q in questions])


def json_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


ORDER = {"type": "object", "additionalProperties": False, "required": ["id", "paid", "size", "items", "note"],
         "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99999}, "paid": {"type": "boolean"},
                        "size": {"enum": ["S", "M", "L"]}, "note": {"type": "string", "maxLength": 12},
                        "items": {"type": "array", "maxItems": 3,
                                  "items": {"type": "object", "required": ["sku"], "additionalProperties": False,
                                            "properties": {"sku": {"type": "string", "maxLength": 6}}}}}}


def test_json_schema_output_always_parses_and_follows_the_schema(real_tok, wide):
    "A random model, sampling freely, constrained by a nested schema: every answer parses and validates."
    questions = [f"Order number {i}, please." for i in range(6)]
    for seed in (0, 1):
        shapers = [make_shaper(real_tok, response_format=json_format(ORDER)) for _ in questions]
        outs = generate_ids(wide, real_tok, rows_of(real_tok, questions), 120, do_sample=True, temperature=1.5,
                            seed=seed, shapers=shapers)
        for o in outs:
            assert o["finish_reason"] == "stop", o
            jsonschema.validate(json.loads(o["text"]), ORDER)


def test_json_object_answers_parse_and_end_with_stop(real_tok, wide, tiny):
    for model, tok in ((wide, real_tok), tiny):
        questions = ["Give me JSON.", "Hi", "A list of fruits?"]
        outs = generate_ids(model, tok, rows_of(tok, questions), 60,
                            shapers=[make_shaper(tok, response_format={"type": "json_object"}) for _ in questions])
        for o in outs:
            assert o["finish_reason"] == "stop" and isinstance(json.loads(o["text"]), dict), o


def test_completed_json_leaves_the_batch_and_its_neighbours_go_on(real_tok, wide):
    rows = rows_of(real_tok, ["JSON please", "prose please"])
    bounded = {"type": "object", "required": ["ok"], "additionalProperties": False,
               "properties": {"ok": {"type": "boolean"}}}
    plain = generate_ids(wide, real_tok, rows[1:], 12)[0]
    outs = generate_ids(wide, real_tok, rows, 12, shapers=[make_shaper(real_tok, response_format=json_format(bounded)),
                                                           None])
    assert json.loads(outs[0]["text"]) in ({"ok": True}, {"ok": False}) and outs[0]["finish_reason"] == "stop"
    assert outs[1]["ids"] == plain["ids"] and outs[1]["finish_reason"] == plain["finish_reason"]


def test_penalties_follow_openais_formula(tiny):
    "Greedy decoding with penalties equals recomputing each step's scores and subtracting them by hand."
    model, tok = tiny
    row = rows_of(tok, ["Who wrote Hamlet?"])[0]
    for presence, frequency in ((0.0, 2.0), (2.0, 0.0), (-1.0, 1.5)):
        got = generate_ids(model, tok, [row], 10, shapers=[make_shaper(tok, presence, frequency)])[0]["ids"]
        ids = []
        with torch.no_grad():
            for _ in range(10):
                logits = model(torch.tensor([row + ids])).logits[0, -1]
                counts = {t: ids.count(t) for t in ids}
                for t, n in counts.items(): logits[t] -= presence * (n > 0) + frequency * n
                ids.append(int(logits.argmax()))
        assert got == ids, (presence, frequency)
    assert penalize(torch.zeros(3), {1: 2}, 0.5, 0.25).tolist() == [0, -1.0, 0]


def test_logit_bias_forces_and_bans(real_tok, wide):
    rows = rows_of(real_tok, ["Hi"])
    plain = generate_ids(wide, real_tok, rows, 6)[0]["ids"]
    forced = generate_ids(wide, real_tok, rows, 6, shapers=[make_shaper(real_tok, logit_bias={"1234": 100})])[0]
    assert forced["ids"] == [1234] * 6
    banned = generate_ids(wide, real_tok, rows, 6, shapers=[make_shaper(real_tok, logit_bias={plain[0]: -100})])[0]
    assert plain[0] not in banned["ids"]


def test_logprobs_are_the_shaped_scores_before_temperature(real_tok, wide):
    rows = rows_of(real_tok, ["What is the capital of France?"])
    with torch.no_grad(): raw = wide(torch.tensor(rows)).logits[0, -1]
    out = generate_ids(wide, real_tok, rows, 5, do_sample=True, temperature=0.3, seed=0, logprobs=[20],
                       shapers=[make_shaper(real_tok, logit_bias={"42": 3.0})])[0]
    steps = out["logprobs"]
    assert len(steps) == out["completion_tokens"] == 5
    first = raw.clone(); first[42] += 3.0
    expected = first.log_softmax(-1)
    assert math.isclose(steps[0]["logprob"], expected[out["ids"][0]].item(), abs_tol=1e-4)
    assert [t for t, _ in steps[0]["top"]] == expected.topk(20).indices.tolist()
    for t, step in zip(out["ids"], steps):
        values = [v for _, v in step["top"]]
        assert len(step["top"]) == 20 and values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-5 and step["logprob"] <= 0
        assert dict(step["top"]).get(t, step["logprob"]) == step["logprob"]


def test_ruled_out_tokens_report_a_finite_floor(real_tok, wide):
    "A JSON mask leaves most tokens at -inf; JSON has no infinity, so they are reported as -9999.0."
    out = generate_ids(wide, real_tok, rows_of(real_tok, ["Hi"]), 8, logprobs=[20],
                       shapers=[make_shaper(real_tok, response_format=json_format({"enum": [True]}))])[0]
    assert out["text"] == "true" and out["finish_reason"] == "stop"
    assert out["logprobs"][0]["top"][-1][1] == -9999.0  # fewer than 20 tokens can begin `true`
    json.dumps(out["logprobs"], allow_nan=False)


class NothingAllowed:
    "A constraint that allows no token at all."
    done = False
    def allowed(self, width): return torch.zeros(width, dtype=torch.bool)
    def accept(self, token): return False


def test_a_row_with_no_allowed_token_stops(tiny):
    model, tok = tiny
    rows = rows_of(tok, ["Hi", "Hello"])
    outs = generate_ids(model, tok, rows, 4, shapers=[Shaper(constraint=NothingAllowed()), None])
    assert (outs[0]["finish_reason"], outs[0]["ids"]) == ("stop", [])
    assert outs[1]["completion_tokens"] == 4


@pytest.mark.parametrize("settings, param, words", [
    ({"presence_penalty": 2.5}, "presence_penalty", "from -2 to 2"),
    ({"frequency_penalty": float("nan")}, "frequency_penalty", "from -2 to 2"),
    ({"frequency_penalty": "1"}, "frequency_penalty", "from -2 to 2"),
    ({"logit_bias": {"49152": 1}}, "logit_bias", "not in the vocabulary (0..49151)"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "not in the vocabulary"),
    ({"logit_bias": {"5": 100.5}}, "logit_bias", "from -100 to 100, got 100.5"),
    ({"logit_bias": {"5": "high"}}, "logit_bias", "from -100 to 100"),
    ({"logit_bias": {"²": 1}}, "logit_bias", "not in the vocabulary"),
    ({"logit_bias": {"9" * 5000: 1}}, "logit_bias", "not in the vocabulary"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "must be 'text', 'json_object' or 'json_schema'"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "must be an object"),
    ({"response_format": json_format([1])}, SCHEMA_PARAM, "must be a JSON Schema object"),
    ({"response_format": json_format({"not": {"type": "string"}})}, SCHEMA_PARAM, "Unimplemented keys"),
    ({"response_format": json_format({"type": "frob"})}, SCHEMA_PARAM, "frob"),
    ({"response_format": json_format({"$ref": "#/nowhere"})}, SCHEMA_PARAM, "nowhere"),
    ({"response_format": json_format({"type": "string", "format": "wibble"})}, SCHEMA_PARAM, "wibble"),
])
def test_settings_that_cannot_be_honoured_name_their_field(real_tok, settings, param, words):
    with pytest.raises(ShapeError) as e: make_shaper(real_tok, **settings)
    assert e.value.param == param and words in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(param + ": ") and isinstance(e.value, ValueError)


def test_settings_that_change_nothing_give_no_shaper(real_tok):
    assert make_shaper(real_tok) is None
    assert make_shaper(real_tok, None, None, {}, {"type": "text"}) is None
    assert make_shaper(real_tok, logit_bias={"0": 0}) is not None  # asked for, even if it changes nothing


def test_the_tokenizer_view_is_built_once_across_threads(real_tok):
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(_ll_tokenizer(real_tok))) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join(60)
    assert len(seen) == 4 and all(s is seen[0] for s in seen)
