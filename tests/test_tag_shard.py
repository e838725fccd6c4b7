"""Tagging at scale: `--shard i/N` jobs over one cache, and several servers sharing the load."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.data import load_pool
from curate.errors import UsageError
from curate.shard import Shard
from curate.tagging import TagConfig, tag_pool
from tests.cli_helpers import cli_error
from tests.openai_server import FakeOpenAI, Faults
from tests.test_tag_server import ROOT, _small_pool


@pytest.mark.parametrize("rows, count", [(11, 2), (10, 3), (2, 4), (0, 3), (7, 1)])
def test_shards_are_contiguous_balanced_and_cover_every_row(rows, count):
    ranges = [Shard(i, count).span(rows) for i in range(count)]
    assert [i for r in ranges for i in r] == list(range(rows))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_shard_syntax_is_checked_in_one_line(capsys):
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse((0, 2)) == Shard(0, 2) and str(Shard(1, 4)) == "1/4"
    assert list(Shard(0, 3).span(11)) == [0, 1, 2, 3] and list(Shard(2, 3).span(11)) == [8, 9, 10]
    for bad in ("2/2", "1", "a/3", "-1/2", "0/0", "1/2/3"):
        with pytest.raises(UsageError, match="expected i/N"):
            Shard.parse(bad)
    message = cli_error(["tag", "pool.jsonl", "-o", "x.jsonl", "--offline", "--shard", "3/3"], capsys)
    assert "shard 3/3: expected i/N" in message


def test_shards_share_one_cache_and_the_full_run_assembles_without_requests(tmp_path):
    pool = _small_pool(tmp_path, rows=11)
    cache = tmp_path / "shared.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with FakeOpenAI(Faults(delay=0.005)) as server:
        common = ["--base-url", server.url, "--model", "m", "--cache", str(cache), "--concurrency", "4"]
        # Both shard jobs at once, as separate processes writing the same SQLite file.
        procs = [subprocess.Popen([sys.executable, "-m", "curate", "tag", str(pool), "-o",
                                   str(tmp_path / f"part{i}.jsonl"), "--shard", f"{i}/2", *common],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        sent = len(server.requests)
        assert sent == len(set(server.bodies())) == 11 * 6
        full = CliRunner().invoke(cli, ["tag", str(pool), "-o", str(tmp_path / "full.jsonl"), *common])
        assert full.exit_code == 0, full.output
        assert len(server.requests) == sent  # every answer came from the shards' cache
        direct = CliRunner().invoke(cli, ["tag", str(pool), "-o", str(tmp_path / "direct.jsonl"), "--base-url",
                                          server.url, "--model", "m"])
        assert direct.exit_code == 0, direct.output
    assert (tmp_path / "full.jsonl").read_text() == (tmp_path / "direct.jsonl").read_text()
    parts = [json.loads(x) for i in range(2) for x in (tmp_path / f"part{i}.jsonl").read_text().splitlines()]
    assert [len((tmp_path / f"part{i}.jsonl").read_text().splitlines()) for i in range(2)] == [6, 5]
    assert parts == [json.loads(x) for x in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert "- shard: 1/2 (rows 6-10 of 11, 0-based)" in (tmp_path / "part1.README.md").read_text()
    assert "shard:" not in (tmp_path / "full.README.md").read_text()


def test_two_servers_share_the_load_and_give_the_single_server_tags(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=10)))
    with FakeOpenAI(Faults(delay=0.02)) as a, FakeOpenAI(Faults(delay=0.02)) as b:
        config = TagConfig(base_urls=(f"{a.url},{b.url}",), model="m", concurrency=6, server_concurrency=2)
        assert config.base_urls == (a.url, b.url)
        two, report = tag_pool(pool, config)
        assert len(a.requests) > 10 and len(b.requests) > 10
        assert len(a.requests) + len(b.requests) == 60
        assert a.max_in_flight <= 2 and b.max_in_flight <= 2  # each server's own limit
        assert set(report.servers) == {a.url, b.url} and "per server" in report.card()["Tagging accounting"]
    with FakeOpenAI() as single:
        one, _ = tag_pool(pool, TagConfig(base_urls=(single.url,), model="m"))
    assert two.equals(one)


def test_a_dead_server_costs_retries_while_the_others_carry_the_run(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    pool = load_pool(str(_small_pool(tmp_path, rows=8)))
    with FakeOpenAI() as live:
        config = TagConfig(base_urls=(dead, live.url), model="m", concurrency=4, backoff=0.01, max_retries=3)
        annotations, report = tag_pool(pool, config)
        assert len(live.requests) == 48
    assert sum(c.failures for c in report.tasks.values()) == 0
    assert annotations["curate_tag_errors"].null_count() == 8
    assert report.servers[dead]["failures"] == report.servers[dead]["requests"] >= 1
    assert report.servers[dead]["requests"] < 20  # cooled down after failing, not picked for every request
    assert report.servers[live.url]["failures"] == 0


def test_shard_output_keeps_only_its_rows_and_dry_run_counts_them(tmp_path):
    pool = _small_pool(tmp_path, rows=5)
    out = CliRunner().invoke(cli, ["tag", str(pool), "-o", str(tmp_path / "p.jsonl"), "--offline", "--shard", "0/2"])
    assert out.exit_code == 0, out.output
    assert [json.loads(x)["id"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == ["r0", "r1", "r2"]
    dry = CliRunner().invoke(cli, ["tag", str(pool), "-o", str(tmp_path / "q.jsonl"), "--base-url",
                                   "http://127.0.0.1:9/v1", "--model", "m", "--shard", "1/2", "--dry-run"])
    assert dry.exit_code == 0 and "12 requests (0 already cached)" in dry.output
    assert Path(tmp_path / "q.jsonl").exists() is False


# Run by a fresh interpreter that imports only the cache: forking it 8 times is ~30 ms, forking
# pytest (which holds torch and the models by then) is 10x that, for the same race.
OPEN_AT_ONCE = """
import json, multiprocessing, sys
from curate.tagging.cache import ResponseCache

def open_cache(path, barrier, results):
    barrier.wait()
    try:
        ResponseCache(path)
        results.put("ok")
    except Exception as err:  # reported to the test, which asserts on it
        results.put(repr(err))

folder, trials, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = multiprocessing.get_context("fork")
outcomes = []
for trial in range(trials):
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=open_cache, args=(f"{folder}/c{trial}.sqlite", barrier, results))
               for _ in range(procs)]
    for w in workers:
        w.start()
    outcomes += [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join()
print(json.dumps(outcomes))
"""


def test_many_processes_opening_a_new_cache_at_once_all_succeed(tmp_path):
    """Shard jobs start together: opening a new SQLite cache from 8 processes at the same moment
    used to fail now and then with "database is locked" (the switch to WAL deadlocks). Without the
    retry, 1 to 15% of these trials fail on 2 cores (fewer when the machine is busy), so 120 trials
    (~4 s) catch it all but always."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", OPEN_AT_ONCE, str(tmp_path), "120", "8"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout)
    assert outcomes == ["ok"] * 120 * 8, [o for o in outcomes if o != "ok"][:3]
