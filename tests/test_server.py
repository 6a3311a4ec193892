"The OpenAI-compatible server on tiny saved models, used by real clients: the API, its protections, and its failures."
import asyncio, json, socket, time
from concurrent.futures import ThreadPoolExecutor

import httpx, openai, psutil, pytest, torch

from gpt_finetune.data import encode_prompts
from gpt_finetune.deploy import save_model
from gpt_finetune.generation import generate_texts
from gpt_finetune.model import tiny_model
from gpt_finetune.options import API_KEY_ENV, ServeConfig
from gpt_finetune.serve import BackgroundServer, Guard, create_app
from gpt_finetune.worker import BatchWorker, Finish, Job

from conftest import run_cli, start_server

KEY, CAP = "sk-test-key", 32
AUTH = {"Authorization": f"Bearer {KEY}"}
HAMLET = [{"role": "user", "content": "Who wrote Hamlet?"}]
SERVE = ("import sys; from gpt_finetune.options import ServeConfig; from gpt_finetune.serve import serve; "
         "serve(sys.argv[1], ServeConfig(port=int(sys.argv[2]), max_tokens_cap={cap}))")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: tiny models on a shared CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "A server process on a tiny model saved with `save_model`, its key in the environment only; yields (URL, process)."
    model, tok = tiny_model("llama")
    folder = save_model(model, tok, tmp_path_factory.mktemp("served") / "tiny", base_model="tiny-llama")
    url, proc = start_server(SERVE.format(cap=CAP), [folder], {API_KEY_ENV: KEY})
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def url(server): return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def in_process(model, tok, **cfg):
    "The app with these settings, served from a thread of this process (so a test can see its worker)."
    app = create_app(model, tok, ServeConfig(name="tiny", **cfg))
    return app, BackgroundServer(app)


# The OpenAI API as clients use it

def test_models_and_health(url, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(url + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["worker_alive"]


def test_chat_completion(client):
    r = client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=5)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 5 or r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=5)
    assert again.choices[0].message.content == r.choices[0].message.content  # greedy by default


def test_completion(client):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert ((r.usage.completion_tokens, r.choices[0].finish_reason) == (6, "length")
            or r.choices[0].finish_reason == "stop")
    sampled = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0.8,
                                        top_p=0.9)
    assert sampled.choices[0].finish_reason in ("stop", "length")


def test_streaming_chat(client):
    whole = client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=8)
    chunks = list(client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_completion_wire_format(url):
    "Raw server-sent events: `data: {chunk}` lines and a final `data: [DONE]`."
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert ({c["object"] for c in chunks} == {"text_completion"}
            and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length"))


# What common clients send: stop sequences, content parts, the developer role, seed

def test_stop_string_and_list(client):
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12).choices[0].text
    stop = whole[3:5]
    cut = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, stop=stop).choices[0]
    assert (cut.text, cut.finish_reason) == (whole[:whole.find(stop)], "stop")
    listed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12,
                                       stop=["\x00never", stop]).choices[0]
    assert (listed.text, listed.finish_reason) == (cut.text, "stop")
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, stop=[stop],
                                         stream=True)
    assert "".join(e.choices[0].text for e in streamed) == cut.text  # nothing of the stop string leaks into a stream


def test_stop_in_chat(client):
    whole = client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=12).choices[0].message.content
    stop = whole[2:4]
    cut = client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=12, stop=stop).choices[0]
    assert (cut.message.content, cut.finish_reason) == (whole[:whole.find(stop)], "stop")


def test_content_as_text_parts(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Who wrote"}, {"type": "text", "text": "Hamlet?"}]}]
    joined = [{"role": "user", "content": "Who wrote\nHamlet?"}]
    a = client.chat.completions.create(model="tiny", messages=parts, max_tokens=8)
    b = client.chat.completions.create(model="tiny", messages=joined, max_tokens=8)
    assert (a.choices[0].message.content == b.choices[0].message.content
            and a.usage.prompt_tokens == b.usage.prompt_tokens)


def test_developer_role_is_system(client):
    ask = lambda role: client.chat.completions.create(model="tiny", max_tokens=8, messages=[
        {"role": role, "content": "Answer in one word."}, *HAMLET])
    dev, sys_ = ask("developer"), ask("system")
    assert (dev.choices[0].message.content == sys_.choices[0].message.content
            and dev.usage.prompt_tokens == sys_.usage.prompt_tokens)


def test_seed_makes_sampling_repeatable(client):
    ask = lambda seed: client.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=16, temperature=1.0,
                                                      seed=seed).choices[0].message.content
    answers = [ask(s) for s in (7, 7, 8, 9)]
    assert answers[0] == answers[1] and len(set(answers)) > 1  # the seed, not a fixed answer, decides


# Bad requests get OpenAI's errors

BAD = [  # (path, body, status, code, param)
    ("/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "max_tokens": "ten"}, 400, "invalid_value",
     "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "Who wrote Hamlet?"}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value",
     "messages.0.role"),
    ("/v1/chat/completions", {"model": "tiny"}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", [1, 2], 400, "invalid_value", None),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": HAMLET}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "max_tokens": CAP + 1}, 400, "max_tokens_too_large",
     "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "temperature": -1}, 400, "invalid_value",
     "temperature"),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "stop": ["a", "b", "c", "d", "e"]}, 400,
     "invalid_value", "stop"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 600}, 400, "context_length_exceeded", "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 3}, 400, "unsupported_parameter", "n"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "' + b"x" * 1_100_000 + b'"}', 413, "request_too_large", None),
]


@pytest.mark.parametrize("path,body,status,code,param", BAD, ids=[f"{b[2]}-{b[3]}-{b[4]}" for b in BAD])
def test_bad_requests_get_openai_errors(url, path, body, status, code, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert ((error["code"], error["param"]) == (code, param) and error["message"]
            and error["type"] == "invalid_request_error")


def test_unknown_route_and_client_exceptions(url, client):
    r = httpx.get(url + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=HAMLET)
    with pytest.raises(openai.BadRequestError, match="context is 512 tokens"):
        client.completions.create(model="tiny", prompt="word " * 600)


# Exposure: the key, on every route but /health, from the environment

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_wrong_or_missing_key_gets_401(url, headers):
    for r in (httpx.get(url + "/v1/models", headers=headers),
              httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": HAMLET}, headers=headers)):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect", "/nothing", "/health/"])
def test_every_route_but_health_needs_the_key(url, path):
    assert httpx.get(url + path).status_code == 401
    assert httpx.get(url + path, headers=AUTH).status_code in (200, 307, 404)  # 307: to /health


def test_a_forged_host_header_does_not_skip_the_key(url):
    "The key is checked on the path the router dispatches on, not on a URL rebuilt from the Host header."
    port = int(url.rsplit(":", 1)[1])
    for host in (b"localhost/health?x=", b"localhost/health#"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            reply = b"".join(iter(lambda: s.recv(65536), b""))
        assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_the_key_comes_from_the_environment_not_the_command_line(server):
    url, proc = server
    assert not any(KEY in arg for arg in psutil.Process(proc.pid).cmdline())
    assert (httpx.get(url + "/v1/models").status_code == 401
            and httpx.get(url + "/v1/models", headers=AUTH).status_code == 200)


# Body size: the bytes received count, not the headers

def chunks(n_bytes: int, prefix: bytes = b'{"model": "tiny", "prompt": "'):
    "A JSON completion body of about `n_bytes`, sent as a generator: httpx sends it chunked, with no Content-Length."
    yield prefix
    for _ in range(n_bytes // 100_000): yield b"x" * 100_000
    yield b'", "max_tokens": 1}'


def test_a_chunked_body_is_counted_as_it_arrives(url):
    big = httpx.post(url + "/v1/completions", content=chunks(1_100_000),
                     headers={**AUTH, "Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    small = httpx.post(url + "/v1/completions",
                       content=(p for p in [b'{"model": "tiny", ', b'"prompt": "Hi", "max_tokens": 2}']),
                       headers={**AUTH, "Content-Type": "application/json"})
    assert small.status_code == 200, small.text  # no Content-Length is no reason to refuse


def test_a_small_declared_length_does_not_let_a_big_body_in():
    ("Content-Length says 20 bytes while the body keeps coming (as a parser that trusts chunked framing "
     "delivers it): 413.")
    received, sent = [], []
    async def app(scope, receive, send):  # the app behind the guard: records what reaches it
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    async def call(declared: bytes, pieces: list[bytes]):
        messages = [{"type": "http.request", "body": p, "more_body": k < len(pieces) - 1} for k, p in enumerate(pieces)]
        async def receive(): return messages.pop(0) if messages else {"type": "http.disconnect"}
        async def send(message): sent.append(message)
        scope = {"type": "http", "method": "POST", "path": "/v1/completions",
                 "headers": [(b"content-length", declared)]}
        await Guard(app, max_body_bytes=1000)(scope, receive, send)
    asyncio.run(call(b"20", [b"x" * 600, b"x" * 600]))
    assert sent[0]["status"] == 413 and received == []
    asyncio.run(call(b"20", [b"x" * 600, b"x" * 300]))  # within the limit: the app gets the whole body, once
    assert sent[-2]["status"] == 200 and received == [{"type": "http.request", "body": b"x" * 900, "more_body": False}]


# Overload: a bounded queue, clients that leave, batches that fit

def test_a_full_queue_answers_429_with_retry_after():
    "The worker waits 2 s to fill a batch, so 30 requests meet a queue of 2: 2 are answered, 28 refused at once."
    model, tok = tiny_model("llama")
    app, srv = in_process(model, tok, max_queue=2, max_batch=30, window_ms=2000)
    def ask(i):
        return httpx.post(srv.url + "/v1/completions",
                          json={"model": "tiny", "prompt": f"Number {i}", "max_tokens": 4}, timeout=60)
    with srv, ThreadPoolExecutor(30) as pool: answers = list(pool.map(ask, range(30)))
    busy = [r for r in answers if r.status_code == 429]
    assert sorted(r.status_code for r in answers) == [200] * 2 + [429] * 28
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "server_busy" for r in busy)
    assert app.state.served.worker.stats["rows"] == 2


@pytest.fixture(scope="module")
def endless():
    "A tiny model and a prompt it continues for 300 tokens without stopping (found by trying a few)."
    model, tok = tiny_model("llama")
    for i in range(50):
        if generate_texts(model, tok, [f"Story {i}:"], max_new_tokens=300)[0]["finish_reason"] == "length":
            return model, tok, f"Story {i}:"
    raise AssertionError("no prompt runs to the length limit")


def test_a_client_that_leaves_while_queued_is_never_generated():
    model, tok = tiny_model("llama")
    app, srv = in_process(model, tok, window_ms=1500)  # the first request waits 1.5 s for others to join it
    with srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 8},
                       timeout=0.5)
        time.sleep(2)
        health = httpx.get(srv.url + "/health").json()
    assert (health["dropped"], health.get("rows", 0)) == (1, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_during_generation_stops_its_row(endless, stream):
    model, tok, prompt = endless
    app, srv = in_process(model, tok, window_ms=0, max_tokens_cap=300)
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 300, "stream": stream}
    with srv:
        if stream:
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
                lines = r.iter_lines()
                next(lines)  # the first piece has arrived: generation runs; then the client goes
        else:
            payload = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
                # generating: now the client goes
                while app.state.served.worker.stats["batches"] == 0: time.sleep(0.005)
        deadline = time.monotonic() + 30
        while app.state.served.worker.stats["cancelled"] == 0 and time.monotonic() < deadline: time.sleep(0.05)
        health = httpx.get(srv.url + "/health").json()
    assert health["cancelled"] == 1 and health.get("length", 0) == 0


def test_batches_keep_every_row_within_the_context():
    ("A long prompt with few new tokens and a short one with many each fit alone; together they would not "
     "(GPT-2: 512 positions).")
    model, tok = tiny_model("gpt2")
    app, srv = in_process(model, tok, window_ms=500, max_tokens_cap=400)
    long_prompt = " ".join(["word"] * 1000)
    long_prompt = tok.decode(encode_prompts(tok, [long_prompt])[0][:400])
    bodies = [{"model": "tiny", "prompt": long_prompt, "max_tokens": 10},
              {"model": "tiny", "prompt": "Hi", "max_tokens": 400}]
    with srv, ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda b: httpx.post(srv.url + "/v1/completions", json=b, timeout=120), bodies))
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert app.state.served.worker.stats["batches"] == 2  # they ran apart


def test_the_batch_token_budget_splits_batches():
    model, tok = tiny_model("llama")
    app, srv = in_process(model, tok, window_ms=500, max_batch_tokens=120)
    with srv, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: httpx.post(srv.url + "/v1/completions", timeout=60,
                                                     json={"model": "tiny", "prompt": f"Number {i}", "max_tokens": 40}),
                                range(4)))
    stats = app.state.served.worker.stats
    assert {r.status_code for r in answers} == {200} and stats["largest_batch"] == 2 and stats["batches"] == 2


def test_a_prompt_over_max_input_tokens_is_refused():
    model, tok = tiny_model("llama")
    app, srv = in_process(model, tok, max_input_tokens=50)
    with srv:
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "word " * 80, "max_tokens": 2})
        ok = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "word " * 10, "max_tokens": 2})
    assert (r.status_code, r.json()["error"]["code"], ok.status_code) == (400, "context_length_exceeded", 200)
    assert "limit of 50" in r.json()["error"]["message"]


# Faults: a failing batch, a stopped worker

def faulty_model():
    "A tiny model whose vocabulary is smaller than its tokenizer's: prompts with high token ids fail inside the model."
    model, tok = tiny_model("llama")
    model.resize_token_embeddings(300)
    ok = "a b c"
    assert max(encode_prompts(tok, [ok])[0]) < 300 and max(encode_prompts(tok, ["Hamlet Shakespeare"])[0]) >= 300
    return model, tok, ok


def test_a_failing_request_gets_500_with_a_request_id_and_no_internals():
    model, tok, ok = faulty_model()
    app, srv = in_process(model, tok, window_ms=0)
    with srv:
        bad = httpx.post(srv.url + "/v1/completions",
                         json={"model": "tiny", "prompt": "Hamlet Shakespeare", "max_tokens": 4})
        with httpx.stream("POST", srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hamlet Shakespeare",
                                                                     "max_tokens": 4, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line]
        good = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": ok, "max_tokens": 4})
        health = httpx.get(srv.url + "/health")
    message = bad.json()["error"]["message"]
    assert bad.status_code == 500 and "req-" in message and bad.json()["error"]["type"] == "server_error"
    assert not any(s in message for s in ("Index", "index", "range", "Traceback", "/", ".py"))
    assert events[-1] == "data: [DONE]" and "error" in json.loads(events[-2][6:]) and "req-" in events[-2]
    assert good.status_code == 200 and health.status_code == 200 and health.json()["error"] == 2


def test_an_exception_in_a_route_gets_500_without_its_text():
    "A chat template that fails (its message names a file): the client gets a request id, the log gets the message."
    model, tok = tiny_model("llama")
    tok.chat_template = "{{ raise_exception('cannot read /home/someone/secret/template.jinja') }}"
    app, srv = in_process(model, tok)
    with srv: r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": HAMLET})
    error = r.json()["error"]
    assert (r.status_code == 500 and "req-" in error["message"] and "secret" not in r.text
            and error["type"] == "server_error")


def test_an_error_event_is_raised_by_the_openai_client():
    model, tok, ok = faulty_model()
    app, srv = in_process(model, tok, window_ms=0)
    with srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIError, match="req-"):
            list(c.completions.create(model="tiny", prompt="Hamlet Shakespeare", max_tokens=4, stream=True))
        with pytest.raises(openai.InternalServerError, match="req-"):
            c.completions.create(model="tiny", prompt="Hamlet Shakespeare", max_tokens=4)


def test_the_worker_outlives_a_job_it_cannot_even_plan():
    "A malformed job breaks batch planning, outside generation: that job fails, the next is served."
    model, tok = tiny_model("llama")
    worker, got = BatchWorker(model, tok, window_ms=0).start(), []
    try:
        worker.submit(Job(None, 3, got.append))
        good = Job(encode_prompts(tok, ["Hi"])[0], 3, got.append)
        worker.submit(good)
        deadline = time.monotonic() + 30
        while not good.finished and time.monotonic() < deadline: time.sleep(0.01)
        assert worker.serving and [g.reason for g in got if isinstance(g, Finish)] == ["error", "length"]
    finally: worker.stop()


def test_health_says_503_when_the_worker_cannot_serve():
    model, tok = tiny_model("llama")
    app, srv = in_process(model, tok)
    with srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        app.state.served.worker.stop()
        health = httpx.get(srv.url + "/health")
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}, timeout=10)
    assert health.status_code == 503 and health.json()["worker_alive"] is False
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "unavailable"


def test_fifty_concurrent_clients(url):
    "50 clients at once, 3 requests each (chat, completion, stream): all answered, batched, server healthy."
    def one_client(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Question {i}?"}],
                                         max_tokens=4)
        text = c.completions.create(model="tiny", prompt=f"Number {i} is", max_tokens=4)
        streamed = list(c.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=4, stream=True))
        return chat.choices[0].finish_reason, text.choices[0].finish_reason, streamed[-1].choices[0].finish_reason
    with ThreadPoolExecutor(50) as pool: results = list(pool.map(one_client, range(50)))
    assert len(results) == 50 and all(r in ("stop", "length") for rs in results for r in rs)
    health = httpx.get(url + "/health").json()
    assert health["worker_alive"] and health["queued"] == 0
    assert health["largest_batch"] > 1  # concurrent requests shared batches


def test_serve_a_missing_folder_is_a_one_line_error(tmp_path):
    r = run_cli("serve", "--model", tmp_path / "nope", timeout=120)
    assert (r.returncode == 2 and r.stderr.strip().startswith("gpt-finetune: error:")
            and len(r.stderr.strip().splitlines()) == 1)
