# Run: .venv/bin/python benchmarks/bench_tagger.py [--requests 3000] [--cached-rows 1000]
"""Tagger throughput against a zero-latency local OpenAI-compatible server (tests/openai_server.py).

1. Requests/second the client sustains at concurrency 64 and 256 (short behaviour prompts, SQLite
   cache on disk, one commit per response). The server runs in its own process so client and server
   CPU seconds are reported apart (both share this machine's cores).
2. Rows/second of a fully cached rerun with Bespoke-Stratos-sized rows (~20 KB traces), every task
   on (difficulty + five behaviours; domains known, so no domain request): render, hash, look up.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.data import load_pool  # noqa: E402
from curate.tagging import TagConfig, tag_pool  # noqa: E402

WORDS = ("so", "we", "check", "the", "sum", "wait", "let", "me", "try", "x", "=", "2", "then", "factor",
         "alternatively", "verify", "first", "case", "hence", "+", "3", "prime", "root", "which", "gives")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_pool(path: Path, rows: int, trace_chars: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            words, n = [], 0
            while n < trace_chars:
                w = rng.choice(WORDS)
                words.append(w)
                n += len(w) + 1
            trace = " ".join(words)
            f.write(json.dumps({"id": f"b{i}", "level": None, "conversations": [
                {"from": "user", "value": f"Return your final response within \\boxed{{}}. Problem {i}: find x."},
                {"from": "assistant", "value": f"<|begin_of_thought|>\n\n{trace}\n\n<|end_of_thought|>\n\n"
                                               f"<|begin_of_solution|>\n\nx = \\boxed{{{i}}}\n\n<|end_of_solution|>"},
            ]}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000, help="requests per concurrency level")
    ap.add_argument("--cached-rows", type=int, default=1000)
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_server.py")], stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    tmp = Path(tempfile.mkdtemp(prefix="bench_tagger_"))
    try:
        for concurrency in (64, 256):
            pool = load_pool(str(write_pool(tmp / f"short{concurrency}.jsonl", args.requests // 5, 300, concurrency)))
            config = TagConfig(base_urls=(url,), model="bench", concurrency=concurrency, tasks="behaviors",
                               cache=str(tmp / f"c{concurrency}.sqlite"))
            s0, c0, t0 = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
            _, report = tag_pool(pool, config)
            wall = time.perf_counter() - t0
            client_cpu, server_cpu = time.process_time() - c0, cpu_seconds(server.pid) - s0
            sent = sum(c.requests for c in report.tasks.values())
            print(f"concurrency {concurrency:>3}: {sent} requests in {wall:.2f} s = {sent / wall:,.0f} req/s; "
                  f"client CPU {client_cpu:.2f} s ({client_cpu / sent * 1e3:.2f} ms/req), "
                  f"server CPU {server_cpu:.2f} s ({server_cpu / sent * 1e3:.2f} ms/req)")

        pool = load_pool(str(write_pool(tmp / "long.jsonl", args.cached_rows, 20_000, 1)))
        config = TagConfig(base_urls=(url,), model="bench", concurrency=64, cache=str(tmp / "long.sqlite"))
        t0 = time.perf_counter()
        _, first = tag_pool(pool, config)
        fill = time.perf_counter() - t0
        sent = sum(c.requests for c in first.tasks.values())
        print(f"fill: {args.cached_rows} rows x 20 KB traces, {sent} requests in {fill:.1f} s "
              f"({sent / fill:,.0f} req/s, {args.cached_rows / fill:,.0f} rows/s)")
        t0 = time.perf_counter()
        _, again = tag_pool(pool, config)
        wall = time.perf_counter() - t0
        hits = sum(c.cache_hits for c in again.tasks.values())
        assert sum(c.requests for c in again.tasks.values()) == 0
        print(f"cached rerun: {args.cached_rows} rows ({hits} cache hits, 0 requests) in {wall:.2f} s = "
              f"{args.cached_rows / wall:,.0f} rows/s (includes pool.examples(): "
              f"{_examples_time(pool):.2f} s)")
    finally:
        server.terminate()
        server.wait()


def _examples_time(pool) -> float:
    t0 = time.perf_counter()
    list(pool.examples())
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
