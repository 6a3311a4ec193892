"""A bounded load test of the server on 127.0.0.1: 200 concurrent clients, a burst past the queue size with poisoned
requests inside it, clients that disconnect mid-request, and beside them connections that stay silent or send their
headers or body a byte at a time. No hang, no crash, every innocent request answered 200 or 429/503 and every poisoned
one 400, every silent and slow connection closed by the server near its deadlines, memory back near its baseline.

Run with `-s` to see the figures (requests/s, p50/p95/p99 latency, error counts, when silent and slow connections were
closed)."""
import asyncio, json, statistics, time

import httpx, psutil, pytest

from gpt_finetune.deploy import save_model
from gpt_finetune.model import tiny_model
from gpt_finetune.options import API_KEY_ENV

from conftest import start_server

CLIENTS, MAX_QUEUE, LEAVERS, STAYERS, ROUNDS = 200, 16, 40, 16, 2
LINGERING, KEEP_ALIVE, READ_TIMEOUT = 120, 2, 3  # silent or dripping connections; the server's deadlines (s)
KEY = "sk-load"
SERVE = ("import sys; from gpt_finetune.options import ServeConfig; from gpt_finetune.serve import serve; "
         f"serve(sys.argv[1], ServeConfig(port=int(sys.argv[2]), max_queue={MAX_QUEUE}, max_batch=8, window_ms=20, "
         f"max_tokens_cap=16, timeout_keep_alive={KEEP_ALIVE}, read_timeout={READ_TIMEOUT}))")
POISON = [  # requests that once failed their whole batch (500 for every row) or the server: each must get 400 alone
    ("/v1/completions", b'{"model": "tiny", "prompt": "", "max_tokens": 4}'),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}], '
                             b'"max_tokens": 4}'),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, '
                             b'"stop": ["' + b"x" * 240_000 + b'"]}'),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model, tok = tiny_model("llama")
    folder = save_model(model, tok, tmp_path_factory.mktemp("load") / "tiny", base_model="tiny-llama")
    url, proc = start_server(SERVE, [folder], {API_KEY_ENV: KEY})
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


def body(i: int, stream: bool = False, max_tokens: int = 4) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": f"Question number {i}?"}],
            "max_tokens": max_tokens, "stream": stream}


async def one(client, i: int) -> tuple[int | str, float]:
    "One client's request (every fourth streamed, every 40th poisoned); returns (status or error name, seconds)."
    start = time.perf_counter()
    try:
        if i % 40 == 39:
            path, content = POISON[i // 40 % len(POISON)]
            r = await client.post(path, content=content, headers={"Content-Type": "application/json"})
            return ("poison", r.status_code), time.perf_counter() - start
        if i % 4:
            r = await client.post("/v1/chat/completions", json=body(i))
            return r.status_code, time.perf_counter() - start
        async with client.stream("POST", "/v1/chat/completions", json=body(i, stream=True)) as r:
            lines = [line async for line in r.aiter_lines() if line]
        ok = r.status_code != 200 or lines[-1] == "data: [DONE]"
        return (r.status_code if ok else "truncated stream"), time.perf_counter() - start
    except httpx.HTTPError as e: return type(e).__name__, time.perf_counter() - start


async def patient(client, i: int, tries: int = 10) -> tuple[int | str, float]:
    "A client that honours 429's Retry-After, as the openai client does."
    for _ in range(tries):
        status, seconds = await one(client, i)
        if status != 429: return status, seconds
        await asyncio.sleep(1)
    return status, seconds


async def leaver(client, i: int):
    "A client that goes away mid-request: a stream closed after its first line, or a request abandoned after a moment."
    try:
        if i % 2:
            async with client.stream("POST", "/v1/chat/completions", json=body(i, stream=True, max_tokens=16)) as r:
                async for _ in r.aiter_lines(): break
        else: await client.post("/v1/chat/completions", json=body(i, max_tokens=16), timeout=0.05 + 0.01 * (i % 20))
    except httpx.HTTPError: pass


async def lingerer(url: str, i: int) -> float | None:
    ("A connection that sends nothing (i % 3 == 0), or its headers (1) or body (2) a byte every half second; returns "
     "the seconds until the server closed it, None if it was still open after 60 s.")
    body = json.dumps({"model": "tiny", "prompt": "Hi " * 100, "max_tokens": 2}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n" % (KEY.encode(), len(body)))
    sent, drip = {0: b"", 1: b"", 2: head}[i % 3], {0: b"", 1: head, 2: body}[i % 3]
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    async def dripping():
        try:
            writer.write(sent)
            for b in drip:
                writer.write(bytes([b])); await writer.drain()
                await asyncio.sleep(0.5)  # the client's pace
        except OSError: pass  # the server closed the connection
    task = asyncio.create_task(dripping())
    try:
        await asyncio.wait_for(reader.read(), 60)  # until the server closes the connection
        return time.perf_counter() - start
    except ConnectionError: return time.perf_counter() - start
    except asyncio.TimeoutError: return None
    finally:
        task.cancel(); writer.close()


async def round_of_load(url: str) -> tuple[list, float, list, list]:
    ("CLIENTS clients at once (a burst past the queue, some poisoned) beside LINGERING connections (silent or slow), "
     "then LEAVERS that disconnect beside STAYERS that retry until answered.")
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, limits=limits,
                                 timeout=120) as client:
        lingering = asyncio.gather(*[lingerer(url, i) for i in range(LINGERING)])
        start = time.perf_counter()
        burst = await asyncio.gather(*[one(client, i) for i in range(CLIENTS)])
        seconds = time.perf_counter() - start
        mixed = await asyncio.gather(*[leaver(client, i) for i in range(LEAVERS)],
                                     *[patient(client, i) for i in range(STAYERS)])
        closed = await lingering
    return burst, seconds, mixed[LEAVERS:], closed


def drained(url: str, timeout: float = 30) -> dict:
    "The server's health once its queue is empty (fails the test if it never empties: a hang)."
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/health", timeout=10).json()
        if health["queued"] == 0: return health
        assert time.monotonic() < deadline, f"the queue never drained: {health}"
        time.sleep(0.1)


def test_load(server):
    url, proc = server
    rss = lambda: psutil.Process(proc.pid).memory_info().rss / 2**20
    for k in range(ROUNDS):
        burst, seconds, stayers, closed = asyncio.run(round_of_load(url))
        health = drained(url)
        if k == 0: baseline = rss()  # after one round: the allocator's pools and caches are warm
        poisoned = [s for s, _ in burst if isinstance(s, tuple)]
        statuses = [s for s, _ in burst + stayers if not isinstance(s, tuple)]
        assert set(statuses) <= {200, 429, 503}, sorted(set(map(str, statuses)))
        assert poisoned and all(s == ("poison", 400) for s in poisoned), poisoned  # refused alone, nobody else hurt
        ok = sorted(t for s, t in burst if s == 200)
        pct = lambda q: ok[int(q * (len(ok) - 1))]
        errors = len(statuses) - sum(statuses.count(c) for c in (200, 429, 503))
        print(f"round {k + 1}: {CLIENTS} concurrent clients, queue of {MAX_QUEUE}: {len(ok)} answered 200 "
              f"in {seconds:.1f} s = {len(ok) / seconds:.1f} requests/s, latency p50 {pct(0.5):.2f} s, "
              f"p95 {pct(0.95):.2f} s, p99 {pct(0.99):.2f} s, 429: {statuses.count(429)}, 503: {statuses.count(503)}, "
              f"other errors: {errors}, poisoned: {len(poisoned)} answered 400; then {LEAVERS} clients left "
              f"mid-request beside {STAYERS} that stayed ({[s for s, _ in stayers].count(200)} answered 200); "
              f"server RSS {rss():.0f} MiB")
        for name, times in (("silent", closed[0::3]), ("slow headers", closed[1::3]), ("slow body", closed[2::3])):
            shut = sorted(t for t in times if t is not None)
            print(f"  {name}: {len(shut)}/{len(times)} connections closed by the server, after "
                  f"{shut[0]:.1f}-{shut[-1]:.1f} s (keep-alive {KEEP_ALIVE} s, read deadline {READ_TIMEOUT} s)")
        print(f"  health: {health}")
        assert None not in closed and max(closed) < READ_TIMEOUT + 15  # every lingering connection was shown the door
        assert health.get("error", 0) == 0  # no row failed: the poisoned requests never reached the worker
        # the burst past the queue size was refused at once, not queued without end
        assert ok and statuses.count(429) > 0
        assert [s for s, _ in stayers].count(200) == STAYERS  # everyone who stayed (and retried) got an answer
    final = httpx.post(url + "/v1/chat/completions", json=body(0), headers={"Authorization": f"Bearer {KEY}"},
                       timeout=30)
    assert proc.poll() is None and final.status_code == 200 and health["worker_alive"]
    assert health.get("cancelled", 0) + health["dropped"] > 0  # work for clients who left was stopped or never started
    print(f"server RSS after round 1: {baseline:.0f} MiB, after round {ROUNDS}: {rss():.0f} MiB")
    assert rss() < baseline * 1.1 + 30, "memory did not come back near its baseline"
