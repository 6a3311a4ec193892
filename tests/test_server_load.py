"""A bounded load test of the server on 127.0.0.1: 200 concurrent clients, a burst past the queue size, clients that
disconnect mid-request. No hang, no crash, every request answered 200 or 429/503, memory back near its baseline.

Run with `-s` to see the figures (requests/s, p50/p95 latency, error counts)."""
import asyncio, statistics, time

import httpx, psutil, pytest

from gpt_finetune.deploy import save_model
from gpt_finetune.model import tiny_model
from gpt_finetune.options import API_KEY_ENV

from conftest import start_server

CLIENTS, MAX_QUEUE, LEAVERS, STAYERS, ROUNDS = 200, 16, 40, 16, 2
KEY = "sk-load"
SERVE = ("import sys; from gpt_finetune.options import ServeConfig; from gpt_finetune.serve import serve; "
         f"serve(sys.argv[1], ServeConfig(port=int(sys.argv[2]), max_queue={MAX_QUEUE}, max_batch=8, window_ms=20, "
         "max_tokens_cap=16))")


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
    "One client's request (every fourth streamed); returns (status or error name, seconds)."
    start = time.perf_counter()
    try:
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


async def round_of_load(url: str) -> tuple[list, float, list]:
    ("CLIENTS clients at once (a burst past the queue), then LEAVERS that disconnect beside STAYERS that retry "
     "until answered.")
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, limits=limits,
                                 timeout=120) as client:
        start = time.perf_counter()
        burst = await asyncio.gather(*[one(client, i) for i in range(CLIENTS)])
        seconds = time.perf_counter() - start
        mixed = await asyncio.gather(*[leaver(client, i) for i in range(LEAVERS)],
                                     *[patient(client, i) for i in range(STAYERS)])
    return burst, seconds, mixed[LEAVERS:]


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
        burst, seconds, stayers = asyncio.run(round_of_load(url))
        health = drained(url)
        if k == 0: baseline = rss()  # after one round: the allocator's pools and caches are warm
        statuses = [s for s, _ in burst + stayers]
        assert set(statuses) <= {200, 429, 503}, sorted(set(map(str, statuses)))
        ok = sorted(t for s, t in burst if s == 200)
        errors = len(statuses) - sum(statuses.count(c) for c in (200, 429, 503))
        print(f"round {k + 1}: {CLIENTS} concurrent clients, queue of {MAX_QUEUE}: {len(ok)} answered 200 "
              f"in {seconds:.1f} s = {len(ok) / seconds:.1f} requests/s, latency p50 {statistics.median(ok):.2f} s, "
              f"p95 {ok[int(0.95 * (len(ok) - 1))]:.2f} s, 429: {statuses.count(429)}, 503: {statuses.count(503)}, "
              f"other errors: {errors}; then {LEAVERS} clients left mid-request beside {STAYERS} that stayed "
              f"({[s for s, _ in stayers].count(200)} answered 200); server RSS {rss():.0f} MiB")
        print(f"  health: {health}")
        # the burst past the queue size was refused at once, not queued without end
        assert ok and statuses.count(429) > 0
        assert [s for s, _ in stayers].count(200) == STAYERS  # everyone who stayed (and retried) got an answer
    final = httpx.post(url + "/v1/chat/completions", json=body(0), headers={"Authorization": f"Bearer {KEY}"},
                       timeout=30)
    assert proc.poll() is None and final.status_code == 200 and health["worker_alive"]
    assert health.get("cancelled", 0) + health["dropped"] > 0  # work for clients who left was stopped or never started
    print(f"server RSS after round 1: {baseline:.0f} MiB, after round {ROUNDS}: {rss():.0f} MiB")
    assert rss() < baseline * 1.1 + 30, "memory did not come back near its baseline"
