"One conversation through every path (training, evaluation, generation, serving) gives the same text and token ids."
import pytest
from fastapi.testclient import TestClient

from gpt_finetune.data import encode_prompts, prompt_text, render_chat, tokenize_records, turn_segments
from gpt_finetune.deploy import chat, generate, stream
from gpt_finetune.evaluation import evaluate_model, record_prompt
from gpt_finetune.generation import generate_answers
from gpt_finetune.model import tiny_model
from gpt_finetune.options import ServeConfig
from gpt_finetune.serve import create_app

QUESTION = "Qui a écrit « Hamlet » ? 🎭"
CONVERSATIONS = {
    "single": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Shakespeare, vers 1600."}],
    "multi": [{"role": "system", "content": "Answer in one line."},
              {"role": "user", "content": "Hi!\n\nAre you there?"}, {"role": "assistant", "content": "Yes: ask away."},
              {"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Shakespeare ☕"}],
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])  # a chat template, and the plain template
def tiny(request):
    return tiny_model(request.param)


def fed(model, run) -> list[int]:
    "The prompt's token ids as the generation core hands them to the model while `run()` runs (its first cached call)."
    seen = []
    def hook(module, args, kwargs):
        if kwargs.get("cache") is not None and not seen: seen.append(kwargs["input_ids"][0].tolist())
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try: run()
    finally: handle.remove()
    assert seen, "the model was never called for generation"
    return seen[0]


def answer_turns(msgs: list[dict]) -> list[int]:
    return [k for k, m in enumerate(msgs) if m["role"] == "assistant"]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_training_renders_and_encodes_every_prompt_as_inference_does(tiny, name):
    model, tok = tiny
    msgs = CONVERSATIONS[name]
    segs = turn_segments(tok, msgs)
    assert "".join(t for t, _ in segs) == render_chat(tok, msgs, add_generation_prompt=False)
    row = tokenize_records([{"messages": msgs, "input": msgs[-2]["content"], "output": msgs[-1]["content"]}], tok)[0]
    ids, labels = row["input_ids"], row["labels"]
    # each answer's first token
    starts = [i for i in range(len(labels)) if labels[i] != -100 and (i == 0 or labels[i - 1] == -100)]
    assert len(starts) == len(answer_turns(msgs))
    for k, start in zip(answer_turns(msgs), starts):
        text = "".join(t for t, _ in segs[:2 * answer_turns(msgs).index(k) + 1])  # everything before answer k
        assert text == render_chat(tok, msgs[:k])
        assert ids[:start] == encode_prompts(tok, [render_chat(tok, msgs[:k])])[0]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_evaluation_generation_and_serving_feed_the_model_the_same_ids(tiny, name):
    model, tok = tiny
    msgs = CONVERSATIONS[name]
    head = msgs[:answer_turns(msgs)[-1]]  # the conversation up to its last answer
    text = render_chat(tok, head)
    want = encode_prompts(tok, [text])[0]
    record = {"messages": msgs, "input": msgs[-2]["content"], "output": msgs[-1]["content"]}
    assert record_prompt(tok, record) == text
    assert fed(model, lambda: evaluate_model(model, tok, [record], max_new_tokens=1)) == want
    assert fed(model, lambda: chat(model, tok, head, max_new_tokens=1)) == want
    assert fed(model, lambda: generate(model, tok, [text], max_new_tokens=1)) == want
    assert fed(model, lambda: list(stream(model, tok, text, max_new_tokens=1))) == want
    if name == "single":  # a bare question is the same single-turn conversation
        assert prompt_text(tok, QUESTION) == text
        assert fed(model, lambda: generate_answers(model, tok, [QUESTION], max_new_tokens=1)) == want
    with TestClient(create_app(model, tok, ServeConfig(name="tiny", window_ms=0))) as client:
        body = {"model": "tiny", "messages": head, "max_tokens": 1}
        reply = {}
        got = fed(model, lambda: reply.update(client.post("/v1/chat/completions", json=body).json()))
    assert got == want, reply
    assert reply["usage"]["prompt_tokens"] == len(want)
