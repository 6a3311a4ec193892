"The OpenAI-compatible server, started with `gpt-finetune serve` on a tiny saved model, used by real clients."
import json, subprocess, time
from concurrent.futures import ThreadPoolExecutor

import httpx, openai, pytest

from gpt_finetune.deploy import save_model
from gpt_finetune.model import tiny_model
from gpt_finetune.serve import free_port

from conftest import CLI, run_cli

KEY, CAP = "sk-test-key", 32
AUTH = {"Authorization": f"Bearer {KEY}"}
HAMLET = [{"role": "user", "content": "Who wrote Hamlet?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "`gpt-finetune serve` on a tiny model saved with `save_model`, on a free port of 127.0.0.1; yields its URL."
    model, tok = tiny_model("llama")
    folder = save_model(model, tok, tmp_path_factory.mktemp("served") / "tiny", base_model="tiny-llama")
    port = free_port()
    proc = subprocess.Popen([CLI, "serve", "--model", str(folder), "--port", str(port), "--api-key", KEY,
                             "--max-tokens-cap", str(CAP)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
    while True:
        assert proc.poll() is None, f"the server exited: {proc.stdout.read()}"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200: break
        except httpx.TransportError: pass
        assert time.monotonic() < deadline, "the server did not start within 90 s"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_and_health(server, client):
    test_ids = [m.id for m in client.models.list().data]
    assert test_ids == ["tiny"]
    health = httpx.get(server + "/health").json()  # no key needed
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
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) in {(6, "length")} or r.choices[0].finish_reason == "stop"
    sampled = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0.8, top_p=0.9)
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


def test_streaming_completion_wire_format(server):
    "Raw server-sent events: `data: {chunk}` lines and a final `data: [DONE]`."
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server + "/v1/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


BAD = [  # (path, body, status, code, param)
    ("/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "max_tokens": "ten"}, 400, "invalid_value", "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": "Who wrote Hamlet?"}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value", "messages.0.role"),
    ("/v1/chat/completions", {"model": "tiny"}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", [1, 2], 400, "invalid_value", None),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": HAMLET}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "max_tokens": CAP + 1}, 400, "max_tokens_too_large", "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": HAMLET, "temperature": -1}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 600}, 400, "context_length_exceeded", "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 3}, 400, "invalid_value", "n"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": ["\n"]}, 400, "unsupported_parameter", "stop"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "' + b"x" * 1_100_000 + b'"}', 413, "request_too_large", None),
]


@pytest.mark.parametrize("path,body,status,code,param", BAD, ids=[f"{b[2]}-{b[3]}-{b[4]}" for b in BAD])
def test_bad_requests_get_openai_errors(server, path, body, status, code, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server + path, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param) and error["message"] and error["type"] == "invalid_request_error"


def test_unknown_route_and_client_exceptions(server, client):
    r = httpx.get(server + "/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=HAMLET)
    with pytest.raises(openai.BadRequestError, match="context is 512 tokens"):
        client.completions.create(model="tiny", prompt="word " * 600)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_wrong_or_missing_key_gets_401(server, headers):
    for r in (httpx.get(server + "/v1/models", headers=headers),
              httpx.post(server + "/v1/chat/completions", json={"model": "tiny", "messages": HAMLET}, headers=headers)):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


def test_fifty_concurrent_clients(server):
    "50 clients at once, 3 requests each (chat, completion, stream): all answered, batched, server healthy."
    def one_client(i):
        c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
        chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Question {i}?"}], max_tokens=4)
        text = c.completions.create(model="tiny", prompt=f"Number {i} is", max_tokens=4)
        streamed = list(c.chat.completions.create(model="tiny", messages=HAMLET, max_tokens=4, stream=True))
        return chat.choices[0].finish_reason, text.choices[0].finish_reason, streamed[-1].choices[0].finish_reason
    with ThreadPoolExecutor(50) as pool: results = list(pool.map(one_client, range(50)))
    assert len(results) == 50 and all(r in ("stop", "length") for rs in results for r in rs)
    health = httpx.get(server + "/health").json()
    assert health["worker_alive"] and health["queued"] == 0
    assert health["largest_batch"] > 1  # concurrent requests shared generate calls


def test_serve_a_missing_folder_is_a_one_line_error(tmp_path):
    r = run_cli("serve", "--model", tmp_path / "nope", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("gpt-finetune: error:") and len(r.stderr.strip().splitlines()) == 1
