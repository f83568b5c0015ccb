"""Throughput and latency of ``marft serve`` under a bounded load, and what malformed requests do.

Starts ``marft serve SOURCE`` on a free loopback port, then, for each concurrency C in
``--concurrency``, runs C client threads that send chat-completions requests one after another
until ``max(--min-requests, --per-client * C)`` requests are done, and reports requests per second,
generated tokens per second, p50 / p95 latency and the mean rows per generation call (from the
server's ``/health``: how many agents' actions each batched call held). It stops by itself.

Then the malformed phase: at the highest concurrency, ``--malformed`` bad requests (bad JSON,
unknown model or role, an empty or too-long task, bad ``max_tokens``, ``n``, ``stream``, an
oversized body) are sent among ``--good`` good ones, shuffled, twice. Every bad one must get a 4xx and every
good one a 200; the server's resident memory is read (psutil) before and after each round.

Usage::

    python benchmarks/serve.py demo --base                       # the untrained demo team
    python benchmarks/serve.py runs/my-run --concurrency 1 4 16
    M=$(python -c "from marft.models.smollm2 import smollm2_path; print(smollm2_path())")
    python benchmarks/serve.py smollm2_arith --base --set model.name=$M
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serve.conftest import Server  # noqa: E402


def tasks_for(source: str, n: int, seed: int = 0) -> list[str]:
    """Varied tasks: secrets for the signalling and routing demos, arithmetic word problems else."""
    rng = random.Random(seed)
    if source in ("demo",) or "demo" in Path(source).name:
        return [f"secret {rng.choice(['red', 'green', 'blue'])}" for _ in range(n)]
    if "routing" in source:
        return [f"which expert knows the secret? {rng.choice(['alpha', 'beta', 'gamma'])}" for _ in range(n)]
    out = []
    for _ in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(1, 30)
        out.append(f"A shop packs {a} boxes of {b} pens and sells {c} pens. How many pens are left?")
    return out


def bad_requests(model: str, max_chars: int, max_body: int) -> list[tuple[bytes, str]]:
    user = [{"role": "user", "content": "x"}]

    def body(**kw) -> bytes:
        return json.dumps({"model": model, "messages": user, **kw}).encode()

    return [
        (b"{not json", "bad JSON"),
        (b"[]", "not an object"),
        (json.dumps({"messages": user}).encode(), "no model"),
        (body(model=f"{model}/ghost"), "unknown role"),
        (body(model="someone-else"), "unknown model"),
        (body(messages=[]), "no messages"),
        (body(messages=[{"role": "user", "content": "x" * (max_chars + 1)}]), "task too long"),
        (body(max_tokens=0), "max_tokens 0"),
        (body(max_tokens=10**9), "max_tokens too large"),
        (body(n=3), "n=3"),
        (body(stream="yes"), "stream not a bool"),
        (b"{" + b" " * max_body + b"}", "body too large"),
    ]


def drain(jobs: list, clients: int, send: Callable[[httpx.Client, Any], None]) -> None:
    """``clients`` threads, each with its own HTTP client, take ``jobs`` in order until none is
    left and ``send`` each one."""
    feed = iter(jobs)
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    job = next(feed, None)
                if job is None:
                    return
                send(http, job)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def load(url: str, model: str, tasks: list[str], clients: int) -> dict:
    """``clients`` threads share ``tasks``; per request: latency and generated tokens."""
    lock = threading.Lock()
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []

    def send(http: httpx.Client, task: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": task}]}
        t0 = time.perf_counter()
        r = http.post(url + "/v1/chat/completions", json=body)
        dt = time.perf_counter() - t0
        with lock:
            if r.status_code != 200:
                errors.append(r.text[:200])
                return
            latencies.append(dt)
            tokens.append(r.json()["usage"]["completion_tokens"])

    before = httpx.get(url + "/health").json()
    t0 = time.perf_counter()
    drain(tasks, clients, send)
    wall = time.perf_counter() - t0
    after = httpx.get(url + "/health").json()
    calls = after["calls"] - before["calls"]
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {
        "concurrency": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": sum(tokens) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": q[18],
        "rows_per_call": (after["rows"] - before["rows"]) / max(calls, 1),
    }


def malformed_round(
    url: str, model: str, good_task: str, bad: list[tuple[bytes, str]], n: int, good: int, clients: int
) -> dict:
    """``n`` bad requests among ``good`` good ones (``good_task``), shuffled, from ``clients``
    threads."""
    jobs = [("bad", b) for b, _ in itertools.islice(itertools.cycle(bad), n)] + [("good", None)] * good
    random.Random(1).shuffle(jobs)
    lock = threading.Lock()
    result = {"bad_4xx": 0, "bad_other": [], "good_ok": 0, "good_other": []}
    body = {"model": model, "messages": [{"role": "user", "content": good_task}]}

    def send(http: httpx.Client, job: tuple[str, bytes | None]) -> None:
        kind, raw = job
        if kind == "bad":
            r = http.post(url + "/v1/chat/completions", content=raw)
            refused = 400 <= r.status_code < 500 and "error" in r.json()
            with lock:
                if refused:
                    result["bad_4xx"] += 1
                else:
                    result["bad_other"].append(r.status_code)
            return
        r = http.post(url + "/v1/chat/completions", json=body)
        with lock:
            if r.status_code == 200:
                result["good_ok"] += 1
            else:
                result["good_other"].append(r.status_code)

    drain(jobs, clients, send)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run folder, or with --base a preset or YAML")
    p.add_argument("--base", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--per-client", type=int, default=3, help="requests per client thread")
    p.add_argument("--malformed", type=int, default=200, help="bad requests per malformed round")
    p.add_argument("--good", type=int, default=48, help="good requests among them")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    top = max(args.concurrency)
    limits = ["--max-concurrency", str(top), "--max-queue", str(4 * top)]
    sets = [x for s in ["run.progress=false", *args.set] for x in ("--set", s)]
    cmd = [
        sys.executable,
        "-m",
        "marft.cli",
        "serve",
        args.source,
        *(["--base"] if args.base else []),
        *limits,
    ]
    server = Server([*cmd, *sets])
    try:
        info = httpx.get(server.url + "/v1/team").json()
        model = info["name"]
        proc = psutil.Process(server.proc.pid)
        load(server.url, model, tasks_for(args.source, 2, seed=99), 1)  # warm-up
        rows = []
        for c in args.concurrency:
            n = max(args.min_requests, args.per_client * c)
            rows.append(load(server.url, model, tasks_for(args.source, n, seed=c), c))
            print(json.dumps(rows[-1]), flush=True)
        bad = bad_requests(model, 8000, 65536)
        memory = [proc.memory_info().rss]
        rounds = []
        for _ in range(2):
            good = tasks_for(args.source, 1)[0]
            rounds.append(malformed_round(server.url, model, good, bad, args.malformed, args.good, top))
            memory.append(proc.memory_info().rss)
            print(json.dumps(rounds[-1]), f"rss {memory[-1] / 2**20:.1f} MiB", flush=True)
    finally:
        code = server.stop()
    base = rows[0]["requests_per_s"]
    summary = {
        "source": args.source,
        "base": args.base,
        "rows": rows,
        "speedup_vs_c1": {r["concurrency"]: r["requests_per_s"] / base for r in rows},
        "malformed": rounds,
        "rss_mib": [m / 2**20 for m in memory],
        "server_exit": code,
        "command": " ".join(["benchmarks/serve.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(markdown(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return summary


def markdown(s: dict) -> str:
    lines = [
        "| concurrency | requests | requests/s | tokens/s | p50 s | p95 s | rows per call | vs C=1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['rows_per_call']:.1f} | "
            f"{s['speedup_vs_c1'][r['concurrency']]:.2f}x |"
        )
    rss = ", ".join(f"{m:.1f}" for m in s["rss_mib"])
    lines.append("")
    for i, m in enumerate(s["malformed"]):
        lines.append(
            f"- malformed round {i + 1}: {m['bad_4xx']} bad requests got 4xx (other: {m['bad_other']}), "
            f"{m['good_ok']} good ones 200 (other: {m['good_other']})"
        )
    lines.append(f"- server memory (RSS, MiB) before and after each round: {rss}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
