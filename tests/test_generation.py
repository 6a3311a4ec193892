"""The generation core: stop strings cost the same per token however long they are, and rows without decoding
settings answer exactly as before, in batches that mix rows with and without them."""
import random, time

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gpt_finetune.data import encode_prompts, prompt_text
from gpt_finetune.decoding import make_shaper
from gpt_finetune.generation import Detokenizer, generate_ids
from gpt_finetune.model import tiny_model


class Chars:
    "A tokenizer with one character per token id, so that stop strings can be placed exactly."
    def decode(self, ids, skip_special_tokens=True): return "".join(map(chr, ids))


class NaiveDetokenizer:
    "The Detokenizer before stop matching read only new text: every prefix of every stop string, on every token."
    def __init__(self, tokenizer, stop=None):
        self.tokenizer, self.stop = tokenizer, [s for s in stop or [] if s]
        self.ids, self.sent, self.stopped = [], 0, False

    def text(self):
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0: self.stopped = True
        return text[:cut] if cut >= 0 else text

    def push(self, token=None, final=False):
        if token is not None and not self.stopped: self.ids.append(token)
        text = self.text()
        partial = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = text if final or self.stopped else text[:len(text) - partial]
        piece, self.sent = safe[self.sent:], max(self.sent, len(safe))
        return piece


def pieces(cls, text: str, stop: list[str]) -> tuple[list[str], str, bool]:
    d = cls(Chars(), stop)
    out = [d.push(ord(c)) for c in text] + [d.push(final=True)]
    return out, d.text(), d.stopped


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: tiny models on a shared CPU


@settings(max_examples=300, deadline=None)
@given(st.text("abc", max_size=30), st.lists(st.text("abc", min_size=1, max_size=5), max_size=3))
def test_stop_matching_streams_what_the_naive_matcher_streams(text, stop):
    assert pieces(Detokenizer, text, stop) == pieces(NaiveDetokenizer, text, stop)


def test_long_stop_strings_cost_no_more_per_token_than_none():
    "Four 240,000-character stop strings that the text keeps partly matching: pushing 200 tokens stays cheap."
    _, tok = tiny_model("llama")
    ids = tok("a" * 600 + "ab" * 200, add_special_tokens=False).input_ids[:200]
    assert len(ids) == 200
    rng = random.Random(0)
    stops = ["a" * 240_000, "ab" * 120_000, "a" * 239_999 + "b", "".join(rng.choice("ab") for _ in range(240_000))]

    def push_all(stop: list[str], bound: float) -> float:
        d = Detokenizer(tok, stop)
        start = time.perf_counter()
        for t in ids:  # the bound is checked per token, so a slow matcher fails after its first token
            d.push(t)
            assert time.perf_counter() - start < bound, f"200 tokens took over {bound:.1f} s with {len(stop)} stops"
        assert not d.stopped
        return time.perf_counter() - start

    base = min(push_all([], 60) for _ in range(3))
    bound = 20 * base + 1.0  # generous for a busy machine; the old matcher took seconds per token
    assert push_all(stops, bound) < bound


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


def test_greedy_rows_without_settings_answer_as_transformers_does(tiny):
    "Rows without a shaper, next to rows with one and rows asking for log-probabilities, keep their answers."
    model, tok = tiny
    rows = encode_prompts(tok, [prompt_text(tok, q) for q in ("Who wrote Hamlet?", "Hi", "What is 2+2?", "Why?")])
    plain = generate_ids(model, tok, rows, 8)
    for i in (0, 2):  # what the rows without settings below must answer
        ref = model.generate(torch.tensor([rows[i]]), max_new_tokens=len(plain[i]["ids"]), do_sample=False,
                             pad_token_id=tok.pad_token_id)
        assert ref[0, len(rows[i]):].tolist() == plain[i]["ids"]
    shapers = [None, make_shaper(tok, frequency_penalty=2.0), None, make_shaper(tok, logit_bias={7: 100})]
    mixed = generate_ids(model, tok, rows, 8, shapers=shapers, logprobs=[None, 3, 5, None])
    for i in (0, 2):
        assert (mixed[i]["ids"], mixed[i]["text"]) == (plain[i]["ids"], plain[i]["text"])
    assert mixed[3]["ids"] == [7] * 8 and mixed[0]["logprobs"] is None and len(mixed[2]["logprobs"]) == 8
    asked = generate_ids(model, tok, rows, 8, logprobs=[2, 2, 2, 2])
    assert [o["ids"] for o in asked] == [o["ids"] for o in plain]


def test_on_token_gets_row_token_and_logprob_info(tiny):
    model, tok = tiny
    rows = encode_prompts(tok, [prompt_text(tok, q) for q in ("Who wrote Hamlet?", "Hi")])
    seen = []
    out = generate_ids(model, tok, rows, 5, on_token=lambda *a: seen.append(a), logprobs=[None, 1])
    assert [(i, t) for i, t, _ in seen if i == 0] == [(0, t) for t in out[0]["ids"]]
    assert all(info is None for i, _, info in seen if i == 0)
    assert [info for i, _, info in seen if i == 1] == out[1]["logprobs"]


def test_bad_logprobs_are_refused_in_one_line(tiny):
    model, tok = tiny
    rows = encode_prompts(tok, [prompt_text(tok, "Hi")])
    for bad in ([21], [-1], [None, None], [1.5]):
        with pytest.raises(ValueError, match="one None or 0..20 per row"):
            generate_ids(model, tok, rows, 2, logprobs=bad)
