"""Every request field a client may send that changes an answer's meaning, through the real `openai` client against a
real server on 127.0.0.1 (a tiny saved model): honoured (logprobs, penalties, logit_bias, response_format), or refused
with a 400 in OpenAI's shape that names the field the client sent."""
import json

import openai, pytest, torch

from gpt_finetune.data import encode_prompts, render_chat
from gpt_finetune.deploy import save_model
from gpt_finetune.generation import generate_ids
from gpt_finetune.model import tiny_model
from gpt_finetune.options import API_KEY_ENV
from gpt_finetune.serve import token_bytes

from conftest import start_server

KEY = "sk-fields"
HAMLET = [{"role": "user", "content": "Who wrote Hamlet?"}]
YES_NO = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
    "additionalProperties": False}}}
SERVE = ("import sys; from gpt_finetune.options import ServeConfig; from gpt_finetune.serve import serve; "
         "serve(sys.argv[1], ServeConfig(port=int(sys.argv[2]), max_tokens_cap=64))")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    "An openai client of a server process on a tiny Llama (greedy by default, answers up to 64 tokens)."
    model, tok = tiny_model("llama")
    folder = save_model(model, tok, tmp_path_factory.mktemp("fields") / "tiny", base_model="tiny-llama")
    url, proc = start_server(SERVE, [folder], {API_KEY_ENV: KEY})
    yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tok():
    return tiny_model("llama")[1]


def chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=kw.pop("messages", HAMLET), **kw)


# Log-probabilities

def test_chat_logprobs(client, tok):
    r = chat(client, max_tokens=8, logprobs=True, top_logprobs=3)
    choice, plain = r.choices[0], chat(client, max_tokens=8).choices[0]
    content = choice.logprobs.content
    assert choice.message.content == plain.message.content and plain.logprobs is None  # not asked: null
    assert len(content) == r.usage.completion_tokens
    assert b"".join(bytes(c.bytes) for c in content).decode() == choice.message.content  # the exact bytes
    for c in content:
        top = c.top_logprobs
        assert len(top) == 3 and c.logprob <= 0 and [t.logprob for t in top] == sorted([t.logprob for t in top])[::-1]
        assert (top[0].token, top[0].logprob) == (c.token, c.logprob)  # greedy took the most likely token
    probs = torch.tensor([t.logprob for t in content[0].top_logprobs]).exp()
    assert 0 < probs.sum() <= 1 + 1e-4  # log-probabilities of a real distribution


def test_chat_logprobs_without_alternatives(client):
    content = chat(client, max_tokens=4, logprobs=True).choices[0].logprobs.content
    assert content and all(c.top_logprobs == [] for c in content)


def test_chat_logprobs_streamed(client):
    whole = chat(client, max_tokens=8, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    chunks = list(chat(client, max_tokens=8, logprobs=True, top_logprobs=2, stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [(c.token, c.bytes) for c in streamed] == [(c.token, c.bytes) for c in whole]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in whole], abs=1e-4)


def test_completion_logprobs(client):
    prompt = "Once upon a time"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, logprobs=2)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == len(prompt) and lp.text_offset == sorted(lp.text_offset)  # OpenAI counts the prompt
    assert all(tok in top and len(top) <= 3 and top[tok] == pytest.approx(l, abs=1e-4)
               for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs))  # the chosen token is listed
    assert "".join(lp.tokens) == text or "\ufffd" in "".join(lp.tokens)  # a token may hold part of a character
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=6)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == text


def test_completion_logprobs_streamed(client):
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, logprobs=1)
    events = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, logprobs=1,
                                            stream=True))
    tokens = [t for e in events if e.choices[0].logprobs for t in e.choices[0].logprobs.tokens]
    offsets = [o for e in events if e.choices[0].logprobs for o in e.choices[0].logprobs.text_offset]
    assert tokens == whole.choices[0].logprobs.tokens and offsets == whole.choices[0].logprobs.text_offset


def test_logprobs_stop_at_the_stop_string(client):
    "A stop string cuts the text; the tokens reported are those that show it, not the ones after."
    whole = client.completions.create(model="tiny", prompt="Story 3:", max_tokens=12, logprobs=0)
    text = whole.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.completions.create(model="tiny", prompt="Story 3:", max_tokens=12, logprobs=0, stop=stop)
    lp = cut.choices[0].logprobs
    assert cut.choices[0].finish_reason == "stop" and len(lp.tokens) < len(whole.choices[0].logprobs.tokens)
    assert all(o - len("Story 3:") < len(cut.choices[0].text) for o in lp.text_offset)


# Scores shaped: logit_bias, penalties, response_format

def test_logit_bias(client, tok):
    model = tiny_model("llama")[0]  # the served weights: its first greedy token, found here
    first_id = generate_ids(model, tok, encode_prompts(tok, [render_chat(tok, HAMLET)]), 1)[0]["ids"][0]
    first = chat(client, max_tokens=1, logprobs=True).choices[0].logprobs.content[0]
    banned = chat(client, max_tokens=1, logprobs=True, logit_bias={str(first_id): -100}).choices[0].logprobs.content[0]
    assert bytes(first.bytes) == token_bytes(tok, first_id) and banned.token != first.token
    forced = chat(client, max_tokens=3, logit_bias={"300": 100})
    assert forced.choices[0].message.content == tok.decode([300] * 3)


def test_presence_and_frequency_penalties(client):
    plain = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, logprobs=0)
    tokens = plain.choices[0].logprobs.tokens
    assert len(set(tokens)) < len(tokens) / 2  # this tiny model repeats itself
    for penalty in ("presence_penalty", "frequency_penalty"):
        shaped = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, logprobs=0,
                                           **{penalty: 2.0})
        assert len(set(shaped.choices[0].logprobs.tokens)) > len(set(tokens)), penalty


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema(client, stream):
    if stream:
        chunks = chat(client, max_tokens=40, response_format=YES_NO, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        r = chat(client, max_tokens=40, response_format=YES_NO)
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
    assert json.loads(text)["answer"] in ("yes", "no")


def test_response_format_json_object_and_text(client):
    r = chat(client, max_tokens=40, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict) and r.choices[0].finish_reason == "stop"
    plain = chat(client, max_tokens=8)
    assert chat(client, max_tokens=8, response_format={"type": "text"}).choices[0].message.content == \
        plain.choices[0].message.content
    text = client.completions.create(model="tiny", prompt="JSON:", max_tokens=40,
                                     extra_body={"response_format": YES_NO})
    assert json.loads(text.choices[0].text)["answer"] in ("yes", "no")  # completions honour it too


# Refused, with a 400 that names the field the client sent

def refused(call) -> dict:
    with pytest.raises(openai.BadRequestError) as e: call()
    error = e.value.body
    assert e.value.status_code == 400 and error["type"] == "invalid_request_error" and error["message"]
    assert error["message"].startswith(error["param"] + ":") and "problem" not in error["message"]
    return error


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
PARTS = {"image_url": {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
         "input_audio": {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
         "file": {"type": "file", "file": {"file_id": "file-1"}}}
U, V = "unsupported_parameter", "invalid_value"  # a feature this server does not have; a value out of range
REFUSED_CHAT = [  # (id, request fields, param, code)
    ("tools", dict(tools=[TOOL]), "tools", U),
    ("tools-auto", dict(tools=[TOOL], tool_choice="auto"), "tools", U),
    ("tool_choice-required", dict(tool_choice="required"), "tool_choice", U),
    ("functions", dict(extra_body={"functions": [TOOL["function"]]}), "functions", U),
    ("n", dict(n=2), "n", U),
    *[(f"part-{k}", dict(messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}]),
       "messages.0.content.1.type", U) for k, part in PARTS.items()],
    ("assistant-tool_calls", dict(messages=[*HAMLET, {"role": "assistant", "content": None, "tool_calls": [CALL]}]),
     "messages.1.tool_calls", U),
    ("tool-role", dict(messages=[*HAMLET, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]),
     "messages.1.role", U),
    ("function-role", dict(messages=[*HAMLET, {"role": "function", "name": "weather", "content": "sunny"}]),
     "messages.1.role", U),
    ("audio", dict(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}), "audio", U),
    ("modalities", dict(modalities=["text", "audio"]), "modalities", U),
    ("web_search_options", dict(web_search_options={}), "web_search_options", U),
    ("top_logprobs-alone", dict(top_logprobs=2), "top_logprobs", V),
    ("top_logprobs-21", dict(logprobs=True, top_logprobs=21), "top_logprobs", V),
    ("presence_penalty-3", dict(presence_penalty=3), "presence_penalty", V),
    ("logit_bias-value", dict(logit_bias={"5": 150}), "logit_bias", V),
    ("logit_bias-key", dict(logit_bias={"hello": 1}), "logit_bias", V),
    ("logit_bias-vocabulary", dict(logit_bias={"999999": 1}), "logit_bias", V),
    ("response_format-type", dict(response_format={"type": "xml"}), "response_format.type", V),
    ("response_format-schema", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}}}),
     "response_format.json_schema.schema", V),
    ("max_completion_tokens", dict(max_completion_tokens=10_000), "max_completion_tokens", "max_tokens_too_large"),
    *[(k, dict(extra_body={k: v}), k, U) for k, v in [("top_k", 5), ("min_p", 0.1), ("repetition_penalty", 1.3),
                                                       ("guided_json", {"type": "object"})]],
]


@pytest.mark.parametrize("fields,param,code", [r[1:] for r in REFUSED_CHAT], ids=[r[0] for r in REFUSED_CHAT])
def test_refused_chat_fields(client, fields, param, code):
    error = refused(lambda: chat(client, max_tokens=2, **fields))
    assert (error["param"], error["code"]) == (param, code)


REFUSED_COMPLETION = [("echo", dict(echo=True), "echo", U), ("suffix", dict(suffix="The end."), "suffix", U),
                      ("best_of", dict(best_of=2), "best_of", U), ("n", dict(n=3), "n", U),
                      ("logprobs-6", dict(logprobs=6), "logprobs", V),
                      ("max_tokens", dict(max_tokens=10_000), "max_tokens", "max_tokens_too_large"),
                      ("empty-prompt", dict(prompt=""), "prompt", V)]


@pytest.mark.parametrize("fields,param,code", [r[1:] for r in REFUSED_COMPLETION],
                         ids=[r[0] for r in REFUSED_COMPLETION])
def test_refused_completion_fields(client, fields, param, code):
    kw = {"prompt": "Hi", "max_tokens": 2, **fields}
    error = refused(lambda: client.completions.create(model="tiny", **kw))
    assert (error["param"], error["code"]) == (param, code)


def test_refusals_read_as_one_line(client):
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    error = refused(lambda: chat(client, messages=image))
    assert error["message"] == ("messages.0.content.0.type: 'image_url' parts are not supported; "
                                "this model reads text parts only")
    assert refused(lambda: chat(client, max_completion_tokens=10_000))["message"].startswith(
        "max_completion_tokens: 10000 is above this server's cap of 64")


def test_harmless_values_of_refused_fields_are_accepted(client):
    "Tools that are never called, the neutral values of refused extras, fields that change nothing: the same answer."
    plain = chat(client, max_tokens=4, logprobs=True)
    same = chat(client, max_tokens=4, logprobs=True, tools=[TOOL], tool_choice="none", n=1, user="u-1",
                metadata={"a": "b"}, store=False, parallel_tool_calls=False, presence_penalty=0, frequency_penalty=0,
                logit_bias={}, extra_body={"top_k": -1, "repetition_penalty": 1.0})
    assert same.choices[0].message.content == plain.choices[0].message.content
    assert [c.token for c in same.choices[0].logprobs.content] == [c.token for c in plain.choices[0].logprobs.content]
