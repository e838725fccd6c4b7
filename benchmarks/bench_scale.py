# Run: .venv/bin/python benchmarks/bench_scale.py [--rows 100000 300000 1200000] [--trace-kb 20] [--dir DIR]
#      [--only inspect tag prune flip recipe tag-llm]
"""Pools of a million rows in bounded memory: `curate` CLI processes at several pool sizes.

For each size N the pool and a donor of the same size (Bespoke-Stratos shape, ~`trace_kb` KB
traces) are generated as parquet, 1024-row row groups, then each
command runs as its own process and is timed; its peak RSS is the process's own `ru_maxrss`
(`os.wait4`), file-backed pages included. The data is generated in a separate process, so the
commands are started from a small one (a child's `ru_maxrss` counts its parent's memory at fork). Commands: `inspect --json`, `tag --offline`,
`prune --keep 0.9 --per-domain`, `flip` (pool and donor), and a recipe tag -> flip -> prune (its
tag step rates difficulty only, what the flip reads, for the pool and the donor). `tag-llm`
(only when named in `--only`) runs the LLM tagger against the repo's local test server, killed
part-way, resumed and rerun from its cache (`tag_llm`).
Disk use (inputs, outputs, the largest temporary folder seen) is printed; everything is removed
after each size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("let us consider the value of x and check whether the sum is even so the answer follows "
         "wait maybe I made a mistake in the previous step let me recompute carefully").split()
CHUNK = 8192


def generate(path: Path, rows: int, trace_kb: int, seed: int, donor: bool) -> None:
    """A Bespoke-Stratos-shaped pool of `rows` rows with ~`trace_kb` KB traces and curate's own
    columns (ids, domains, difficulties, a math influence score), written `CHUNK` rows at a time
    in 1024-row row groups. Every trace is one shared text after a row number."""
    rng = np.random.default_rng(seed)
    base = " ".join(rng.choice(WORDS, size=trace_kb * 250))[: trace_kb * 1024]
    writer = None
    for start in range(0, rows, CHUNK):
        idx = range(start, min(rows, start + CHUNK))
        n = len(idx)
        math = rng.random(n) < 0.6
        level = rng.integers(1, 6, size=n)
        prefix = np.where(math, "Return your final response within \\boxed{}. ",
                          "Generate an executable Python function generated from the given prompt. ")
        convs = [[{"from": "user", "value": f"{p}Problem {seed}-{i}: compute {i} plus {i * 7} and explain."},
                  {"from": "assistant", "value": f"<|begin_of_thought|>\n\n{i} {base}\n\n<|end_of_thought|>\n\n"
                                                 f"<|begin_of_solution|>\n\n\\boxed{{{i}}}\n\n<|end_of_solution|>"}]
                 for p, i in zip(prefix, idx, strict=True)]
        table = pa.table({
            "system": ["You are a careful reasoner."] * n,
            "conversations": convs,
            "curate_id": [f"{'donor' if donor else 'pool'}:{i}" for i in idx],
            "curate_domain": np.where(math, "math", "code").tolist(),
            "curate_domain_source": ["prefix"] * n,
            "curate_difficulty": (level * 2).astype(float).tolist(),
            "curate_difficulty_source": ["llm"] * n,
            "curate_influence_math": rng.normal(size=n).tolist(),
            "curate_nll": rng.random(n).tolist(),
            "curate_tokens": rng.integers(100, 8000, size=n).tolist(),
        })
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=1024)
    writer.close()


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def temp_watch(stop: threading.Event, peak: list[int]) -> None:
    """The largest total size of curate's temporary folders while a command runs."""
    root = Path(tempfile.gettempdir())
    while not stop.wait(0.5):
        try:
            peak[0] = max(peak[0], sum(size_of(p) for p in root.glob("curate-*")))
        except OSError:
            pass


def run(argv: list[str], cwd: Path, kill_when=None) -> tuple[float, float, int]:
    """(wall s, peak RSS GB, peak temp bytes) of one CLI process; `kill_when()` true (asked every
    0.5 s) kills it with SIGKILL, as a node failure would."""
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=temp_watch, args=(stop, peak), daemon=True)
    watcher.start()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "curate", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=open(cwd / "stderr.log", "a"))
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if kill_when else 0)
        if pid:
            break
        if not killed and kill_when():
            proc.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.5)
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    if killed:
        return wall, usage.ru_maxrss / 1024**2, peak[0]
    if os.waitstatus_to_exitcode(status) != 0:
        print((cwd / "stderr.log").read_text()[-3000:])
        raise SystemExit(f"curate {' '.join(argv)} failed")
    return wall, usage.ru_maxrss / 1024**2, peak[0]


RECIPE = """inputs:
  pool: pool.parquet
  donor: donor.parquet
steps:
  - op: tag
    offline: true
    tasks: [difficulty]
    also: [donor]
  - op: flip
    donor: donor
  - op: prune
    keep: 0.9
    per_domain: true
output: recipe-out.parquet
"""


def served(url: str) -> int:
    """Chat requests the test server has answered (its GET /stats)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as reply:
        return json.load(reply)["requests"]


def tag_llm(work: Path, rows: int) -> None:
    """The LLM tagger (difficulty only: one request per row) against the repo's local test server
    (`tests/openai_server.py`, a zero-latency OpenAI-compatible server): a run killed with SIGKILL
    after 40% of the rows' requests, the same command again (it resumes from the cache file), and
    a third run that must send nothing. Prints each run's wall time and peak RSS, the requests the
    server answered, and whether the resumed and the cached outputs are equal."""
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_server.py")], stdout=subprocess.PIPE,
                              text=True)
    try:
        url = server.stdout.readline().strip()
        argv = ["tag", "pool.parquet", "--tasks", "difficulty", "--base-url", url, "--model", "fake",
                "--cache", "tags.sqlite", "-o"]
        lines = []
        wall, rss, temp = run([*argv, "tagged.parquet"], work, kill_when=lambda: served(url) >= 0.4 * rows)
        at_kill = served(url)
        lines.append(("tag-llm killed", wall, rss, temp, f"killed after {at_kill} requests"))
        wall, rss, temp = run([*argv, "tagged.parquet"], work)
        resumed = served(url)
        lines.append(("tag-llm resume", wall, rss, temp, f"{resumed - at_kill} requests"))
        wall, rss, temp = run([*argv, "again.parquet"], work)
        lines.append(("tag-llm cached", wall, rss, temp, f"{served(url) - resumed} requests"))
        columns = ["curate_id", "curate_difficulty", "curate_difficulty_raw", "curate_difficulty_source",
                   "curate_tag_errors"]
        first, again = (pq.read_table(work / name, columns=columns) for name in ("tagged.parquet", "again.parquet"))
        tagged = first["curate_difficulty_source"].to_pylist().count("llm")
        for name, wall, rss, temp, note in lines:
            print(f"{rows:>9} {name:<15} {wall:>8.1f} {rows / wall:>9.0f} {rss:>12.2f} "
                  f"{size_of(work / 'tagged.parquet') / 2**20:>10.0f} {temp / 2**20:>8.0f}  {note}", flush=True)
        print(f"# tag-llm: {served(url)} requests answered for {rows} rows in all; resumed output "
              f"{'equals' if first.equals(again) else 'DIFFERS FROM'} the cached rerun's; {tagged} rows rated by "
              f"the server; cache file {size_of(work / 'tags.sqlite') / 2**20:.0f} MB", flush=True)
    finally:
        server.kill()
        server.wait()


def main() -> None:
    if sys.argv[1:2] == ["--generate"]:
        work, rows, trace_kb, donor = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
        generate(work / "pool.parquet", rows, trace_kb, 0, donor=False)
        if donor:
            generate(work / "donor.parquet", rows, trace_kb, 1, donor=True)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_200_000])
    ap.add_argument("--trace-kb", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temporary one).")
    ap.add_argument("--only", nargs="+", default=None,
                    help="Commands to run (inspect tag prune flip recipe; tag-llm runs only when named).")
    args = ap.parse_args()
    commands = {
        "inspect": ["inspect", "pool.parquet", "--json"],
        "tag": ["tag", "pool.parquet", "--offline", "-o", "tagged.parquet"],
        "prune": ["prune", "pool.parquet", "--keep", "0.9", "--per-domain", "-o", "pruned.parquet"],
        "flip": ["flip", "pool.parquet", "--donor", "donor.parquet", "-o", "flipped.parquet"],
        "recipe": ["run", "recipe.yaml"],
    }
    outputs = {"tag": "tagged.parquet", "prune": "pruned.parquet", "flip": "flipped.parquet", "recipe": "recipe-out.parquet"}
    names = args.only or list(commands)
    print(f"{'rows':>9} {'command':<8} {'wall s':>8} {'rows/s':>9} {'peak RSS GB':>12} {'output MB':>10} {'temp MB':>8}")
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir))
        try:
            t = time.perf_counter()
            donor = "flip" in names or "recipe" in names
            subprocess.run([sys.executable, __file__, "--generate", str(work), str(rows), str(args.trace_kb),
                            str(int(donor))], check=True)
            (work / "recipe.yaml").write_text(RECIPE)
            raw = rows * (args.trace_kb * 1024 + 200) / 2**30
            print(f"# {rows} rows: generated in {time.perf_counter() - t:.0f} s; pool.parquet "
                  f"{size_of(work / 'pool.parquet') / 2**20:.0f} MB on disk for ~{raw:.1f} GB of text", flush=True)
            for name in names:
                if name == "tag-llm":
                    tag_llm(work, rows)
                    continue
                wall, rss, temp = run(commands[name], work)
                out = work / outputs[name] if name in outputs else None
                out_mb = size_of(out) / 2**20 if out else 0
                print(f"{rows:>9} {name:<8} {wall:>8.1f} {rows / wall:>9.0f} {rss:>12.2f} {out_mb:>10.0f} "
                      f"{temp / 2**20:>8.0f}", flush=True)
                for leftover in [*work.glob("tagged*"), *work.glob("pruned*"), *work.glob("flipped*"),
                                 *work.glob("recipe-out*"), *work.glob(".curate*"),
                                 *work.glob("again*"), *work.glob("tags.sqlite*")]:
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
