"""Serving speed: 8 concurrent clients against `gpt-finetune serve`'s app vs a plain pipeline, one request at a time.

    .venv/bin/python benchmarks/serve_speed.py            # 8 clients x 3 requests, 32 new tokens (~1-2 min of CPU)
    .venv/bin/python benchmarks/serve_speed.py --quick    # 8 clients x 1 request, 8 new tokens, to check that it works

Both sides use the default model (SmolLM2-135M-Instruct, loaded from the cache by `load_model()`), the same
questions (the first test questions of the bundled chatterbot sample), its chat template, greedy decoding,
at most N new tokens and the same stop tokens. The server runs in this process (uvicorn in a thread, the
real HTTP stack on 127.0.0.1) and is called with the `openai` client from 8 threads; the baseline is
`transformers.pipeline("text-generation")` called once per request in a loop. Generated tokens are counted
the same way on both sides: the answer text re-tokenized. Each side is warmed up with one untimed request.
"""
from __future__ import annotations
import argparse, time
from concurrent.futures import ThreadPoolExecutor


def questions(n: int) -> list[str]:
    "The first `n` test questions of the main job's split of the bundled data."
    from gpt_finetune.clean import clean_dataset
    from gpt_finetune.data import default_data_path, split_records
    from gpt_finetune.formats import load_records
    kept, _ = clean_dataset(load_records(default_data_path()).records)
    recs = split_records(kept, 0.1, 0.1, 42)["test"]
    return [r["input"] for r in (recs * (n // len(recs) + 1))[:n]]


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)


def run_pipeline(model, tok, qs: list[str], max_tokens: int) -> tuple[float, list[str]]:
    "A plain text-generation pipeline, one request after another; returns `(seconds, answers)`."
    from transformers import pipeline
    from gpt_finetune.data import stop_token_ids
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    kwargs = dict(max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop_token_ids(tok),
                  pad_token_id=tok.pad_token_id, return_full_text=False)
    pipe([{"role": "user", "content": "Hello"}], **kwargs)  # warm-up
    start = time.perf_counter()
    answers = [pipe([{"role": "user", "content": q}], **kwargs)[0]["generated_text"] for q in qs]
    return time.perf_counter() - start, answers


def run_server(model, tok, qs: list[str], max_tokens: int, clients: int) -> tuple[float, list[str], tuple[int, int]]:
    "The server with `clients` concurrent openai clients; returns `(seconds, answers, (batches, rows))`."
    import openai
    from gpt_finetune.options import ServeConfig
    from gpt_finetune.serve import BackgroundServer, create_app
    app = create_app(model, tok, ServeConfig(name="default", max_tokens_cap=max_tokens, max_batch=clients))
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=600)
        ask = lambda q: client.chat.completions.create(model="default", messages=[{"role": "user", "content": q}],
                                                       max_tokens=max_tokens).choices[0].message.content
        ask("Hello")  # warm-up
        before = dict(app.state.served.worker.stats)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool: answers = list(pool.map(ask, qs))
        seconds = time.perf_counter() - start
        stats = app.state.served.worker.stats
    return seconds, answers, (stats["batches"] - before.get("batches", 0), stats["rows"] - before.get("rows", 0))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    per_client, max_tokens = (1, 8) if args.quick else (3, 32)
    from gpt_finetune.model import load_model, quiet_progress_bars
    from gpt_finetune.deploy import generation_config_for
    quiet_progress_bars()
    model, tok = load_model()
    model.eval().generation_config = generation_config_for(tok, max_tokens)
    qs = questions(args.clients * per_client)
    base_s, base_answers = run_pipeline(model, tok, qs, max_tokens)
    srv_s, srv_answers, batches = run_server(model, tok, qs, max_tokens, args.clients)
    rows = [("pipeline, one at a time", base_s, count_tokens(tok, base_answers)),
            (f"server, {args.clients} concurrent clients", srv_s, count_tokens(tok, srv_answers))]
    print(f"default model, {len(qs)} chat requests, greedy, at most {max_tokens} new tokens each\n")
    print("| setup | seconds | requests/s | generated tokens | tokens/s |\n|---|---|---|---|---|")
    for name, s, n in rows: print(f"| {name} | {s:.1f} | {len(qs) / s:.2f} | {n} | {n / s:.1f} |")
    same = sum(a.strip() == b.strip() for a, b in zip(base_answers, srv_answers))
    print(f"\nspeed-up: {base_s / srv_s:.2f}x requests/s; the server ran {batches[1]} requests in {batches[0]} batches")
    print(f"identical answers: {same}/{len(qs)} (batched left-padded vs single rows can differ in the last float bits)")


if __name__ == "__main__":
    main()
