"""Hostile HTTP clients: no request can hurt another. Each case with its expected outcome: long stop strings, empty
prompts and a poisoned row inside a busy batch, lone surrogates in any field, out-of-range seeds, megabyte prompts
beside /health, and connections that stay silent or send their headers or body a byte at a time. Real servers on
127.0.0.1 (tiny models, uvicorn in this process so a test can see the worker), real HTTP clients and raw sockets."""
import json, socket, time
from concurrent.futures import ThreadPoolExecutor

import httpx, pytest, torch

from gpt_finetune.data import encode_prompts
from gpt_finetune.model import tiny_model
from gpt_finetune.options import ServeConfig
from gpt_finetune.serve import BackgroundServer, create_app
from gpt_finetune.worker import MAX_STOP_CHARS

JSON = {"Content-Type": "application/json"}
KEEP_ALIVE, READ_TIMEOUT = 1, 2  # the test server's deadlines, in seconds: short, so the tests take seconds


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: tiny models on a shared CPU


def serving(model, tok, **cfg) -> tuple:
    "An app with these settings and a `BackgroundServer` for it (not started)."
    settings = dict(name="tiny", max_tokens_cap=32, timeout_keep_alive=KEEP_ALIVE, read_timeout=READ_TIMEOUT) | cfg
    app = create_app(model, tok, ServeConfig(**settings))
    return app, BackgroundServer(app)


@pytest.fixture(scope="module")
def server():
    "One server for the cases that do not need their own: batches gather for 300 ms."
    app, srv = serving(*tiny_model("llama"), window_ms=300, max_body_bytes=5_000_000, max_input_tokens=400)
    with srv: yield app, srv


def post(url: str, body, path: str = "/v1/completions", timeout: float = 120) -> httpx.Response:
    "POST `body` (a dict, or raw bytes sent as they are) and return the response."
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=JSON, timeout=timeout)


def error_of(r: httpx.Response) -> tuple:
    "(status, code, param) of an OpenAI-style error response."
    error = r.json()["error"]
    assert error["message"] and error["type"], r.text
    return r.status_code, error["code"], error["param"]


# Stop strings: OpenAI's caps, so no request can make detokenizing slow for its batch

def test_stop_strings_are_capped(server):
    url = server[1].url
    ask = lambda stop: post(url, {"model": "tiny", "prompt": "Hi", "max_tokens": 2, "stop": stop})
    huge = ask(["x" * 240_000] * 4)  # was: 24 s for 4 tokens, /health stalled meanwhile
    assert error_of(huge) == (400, "invalid_value", "stop") and str(MAX_STOP_CHARS) in huge.json()["error"]["message"]
    assert error_of(ask(["x" * (MAX_STOP_CHARS + 1)]))[0] == 400
    assert error_of(ask(["a", "b", "c", "d", "e"]))[0] == 400
    assert ask(["x" * MAX_STOP_CHARS] * 4).status_code == 200


# One bad row never fails its batch-mates

def test_an_empty_prompt_is_400_and_its_batch_mates_are_answered(server):
    app, srv = server
    bodies = [{"model": "tiny", "prompt": f"Number {i}", "max_tokens": 3} for i in range(8)]
    bodies.insert(4, {"model": "tiny", "prompt": "", "max_tokens": 3})  # was: 8 of 8 innocent requests got 500
    with ThreadPoolExecutor(len(bodies)) as pool: answers = list(pool.map(lambda b: post(srv.url, b), bodies))
    assert [r.status_code for r in answers] == [200] * 4 + [400] + [200] * 4, [r.text for r in answers]
    assert error_of(answers[4])[2] == "prompt"


def test_a_chat_whose_rendered_prompt_is_empty_is_400():
    model, tok = tiny_model("llama")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the content alone, no markup
    app, srv = serving(model, tok)
    with srv:
        empty = post(srv.url, {"model": "tiny", "messages": [{"role": "user", "content": ""}]}, "/v1/chat/completions")
        fine = post(srv.url, {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                    "/v1/chat/completions")
    assert error_of(empty) == (400, "empty_prompt", "messages") and fine.status_code == 200


def faulty_model():
    "A tiny model whose vocabulary is smaller than its tokenizer's: prompts with high token ids fail inside the model."
    model, tok = tiny_model("llama")
    model.resize_token_embeddings(300)
    assert max(encode_prompts(tok, ["Hamlet Shakespeare"])[0]) >= 300
    return model, tok


def test_a_poisoned_row_fails_alone_inside_a_busy_batch():
    model, tok = faulty_model()
    innocent = [p for p in ("a b c", "b c a", "c a b", "a a b", "b b c", "c c a", "a c b") if
                max(encode_prompts(tok, [p])[0]) < 300]
    app, srv = serving(model, tok, window_ms=1000)
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 3} for p in innocent]
    bodies.insert(2, {"model": "tiny", "prompt": "Hamlet Shakespeare", "max_tokens": 3})
    with srv, ThreadPoolExecutor(len(bodies)) as pool: answers = list(pool.map(lambda b: post(srv.url, b), bodies))
    statuses = [r.status_code for r in answers]
    stats = app.state.served.worker.stats
    assert statuses == [200, 200, 500] + [200] * (len(innocent) - 2), [r.text for r in answers]
    assert "req-" in answers[2].json()["error"]["message"] and stats["error"] == 1
    assert stats["largest_batch"] > 2  # they did share a batch: the innocent rows were answered alone after it failed


# Input errors are 4xx in OpenAI's shape, whatever field they hide in

SURROGATES = [  # (raw body with a lone surrogate, path, param)
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi \\ud800"}]}', "/v1/chat/completions",
     "messages.0.content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     "/v1/chat/completions", "messages.0.content.0.text"),
    (b'{"model": "tiny\\ud800", "messages": [{"role": "user", "content": "Hi"}]}', "/v1/chat/completions", "model"),
    (b'{"model": "tiny", "messages": [{"role": "\\ud800", "content": "Hi"}]}', "/v1/chat/completions",
     "messages.0.role"),
    (b'{"model": "tiny", "prompt": "\\ud800"}', "/v1/completions", "prompt"),
    (b'{"model": "tiny", "prompt": "Hi", "stop": "\\ud800"}', "/v1/completions", "stop"),
    (b'{"model": "tiny", "prompt": "Hi", "stop": ["ok", "\\ud800"]}', "/v1/completions", "stop.1"),
    (b'{"model": "tiny", "prompt": "Hi", "logit_bias": {"\\ud800": 1}}', "/v1/completions", "logit_bias"),
    (b'{"model": "tiny", "prompt": "Hi", "user": "\\ud800"}', "/v1/completions", "user"),
    (b'{"model": "tiny", "prompt": "Hi", "response_format": {"type": "json_schema", "json_schema": {"name": '
     b'"\\ud800", "schema": {}}}}', "/v1/completions", "response_format.json_schema.name"),
]


@pytest.mark.parametrize("body,path,param", SURROGATES, ids=[s[2] for s in SURROGATES])
def test_a_lone_surrogate_in_any_field_is_400(server, body, path, param):
    r = post(server[1].url, body, path)
    assert error_of(r) == (400, "invalid_value", param), r.text  # was: 500, or accepted as if it were text
    assert "surrogate" in r.json()["error"]["message"]


def test_an_out_of_range_seed_is_400(server):
    url = server[1].url
    ask = lambda seed: post(url, {"model": "tiny", "prompt": "Hi", "max_tokens": 2, "temperature": 1.0, "seed": seed})
    assert error_of(ask(2**64)) == (400, "invalid_value", "seed")  # was: 500, failing its whole batch
    assert error_of(ask(-2**63 - 1))[2] == "seed"
    assert [ask(s).status_code for s in (2**64 - 1, -2**63, -1)] == [200] * 3  # what torch accepts is accepted


# Slow work stays off the event loop

def test_megabyte_prompts_do_not_block_health(server):
    "Two 1 MB prompts are tokenized (seconds each) in threads; /health keeps answering at once meanwhile."
    url = server[1].url
    big = {"model": "tiny", "prompt": "word " * 200_000, "max_tokens": 2}  # over max_input_tokens: 400 once counted
    with ThreadPoolExecutor(2) as pool:
        start = time.monotonic()
        answers = [pool.submit(post, url, big) for _ in range(2)]
        waits = []
        while not all(a.done() for a in answers):
            t = time.monotonic()
            assert httpx.get(url + "/health", timeout=60).status_code == 200
            waits.append(time.monotonic() - t)
        busy = time.monotonic() - start
    assert [error_of(a.result())[1] for a in answers] == ["context_length_exceeded"] * 2
    print(f"tokenizing 2 x 1 MB took {busy:.1f} s; /health answered {len(waits)} times, slowest {max(waits):.3f} s")
    assert max(waits) < busy / 4  # was: /health waited for each prompt's whole tokenization, half the time each


# Connections that stay silent, or send a byte at a time

def connect(srv) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=30)


def read_until_closed(s: socket.socket, limit: float = 30) -> tuple[bytes, float]:
    "Everything the server sends until it closes the connection, and how many seconds that took (fails after limit)."
    start, got = time.monotonic(), b""
    s.settimeout(limit)
    while chunk := s.recv(65536): got += chunk
    return got, time.monotonic() - start


def closed_quietly(got: bytes) -> bool:
    "True for what a silent connection may get before it is closed: nothing, or a 408 once the header deadline passed."
    return got == b"" or got.startswith(b"HTTP/1.1 408")


def test_a_silent_connection_is_closed(server):
    with connect(server[1]) as s:  # was: held open for as long as the client liked
        got, seconds = read_until_closed(s)
    assert closed_quietly(got) and seconds < KEEP_ALIVE + 5


def drip(s: socket.socket, data: bytes, every: float = 0.2) -> float:
    "Send `data` a byte at a time until the server closes the connection; returns when it did, in seconds."
    start = time.monotonic()
    try:
        for b in data:
            s.sendall(bytes([b]))
            time.sleep(every)  # the client's pace, not a wait for the server
    except OSError: pass  # the server closed the connection
    return time.monotonic() - start


def test_headers_sent_a_byte_at_a_time_get_408(server):
    with connect(server[1]) as s:
        drip(s, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" * 10)
        got, _ = read_until_closed(s)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "request_timeout"


def test_a_body_sent_a_byte_at_a_time_gets_408(server):
    body = json.dumps({"model": "tiny", "prompt": "Hi " * 200, "max_tokens": 2}).encode()
    with connect(server[1]) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        seconds = drip(s, body)
        got, _ = read_until_closed(s)
    head, _, reply = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(reply)["error"]["code"] == "request_timeout"
    assert seconds < READ_TIMEOUT + 10  # closed at the deadline, long before the body would have ended


def test_silent_connections_beyond_the_cap_are_refused_and_then_closed():
    "With the cap reached by silent connections, a request gets 503 at once; once they are closed, 200."
    app, srv = serving(*tiny_model("llama"), limit_concurrency=20, timeout_keep_alive=5)
    with srv:
        silent = [connect(srv) for _ in range(200)]
        try:
            refused = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
            start = time.monotonic()
            closed = sum(closed_quietly(read_until_closed(s)[0]) for s in silent)
            seconds = time.monotonic() - start
        finally:
            for s in silent: s.close()
        served = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
    print(f"200 silent connections: all closed by the server within {seconds:.1f} s "
          f"(read deadline {READ_TIMEOUT} s, keep-alive 5 s)")
    assert refused.status_code == 503 and closed == 200 and served.status_code == 200
