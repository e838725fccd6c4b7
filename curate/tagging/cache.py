"""A SQLite cache of every rater request and response, so a rerun repeats no completed request.

Key: sha256 over (model, prompt hash, rendered input, sampling parameters). One row per completed
response, committed as it arrives (WAL journal), so a run killed at any moment keeps everything
that finished; several processes may write the same file at once (shards of one job). Failed requests (retries exhausted) are not stored: a rerun tries them again.
The rendered input is kept zlib-compressed for audit; the API key is never stored.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Named migrations, applied in order and recorded in `migrations` (as in simonw/llm).
MIGRATIONS = [
    ("m001_responses", """
        CREATE TABLE responses (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            prompt TEXT NOT NULL,
            prompt_hash TEXT NOT NULL,
            params TEXT NOT NULL,
            input BLOB NOT NULL,
            content TEXT,
            tokens_in INTEGER,
            tokens_out INTEGER,
            base_url TEXT,
            created REAL NOT NULL
        )"""),
    ("m002_runs", """
        CREATE TABLE runs (
            finished REAL NOT NULL,
            wall_s REAL NOT NULL,
            rows INTEGER NOT NULL
        )"""),
]


def request_key(model: str, prompt_hash: str, rendered: str, params: dict[str, Any]) -> str:
    """The cache key of one request (64 hex)."""
    h = hashlib.sha256()
    for part in (model, prompt_hash, json.dumps(params, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    h.update(rendered.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Cached:
    content: str | None
    tokens_in: int
    tokens_out: int


class ResponseCache:
    """The cache file at `path` (created with its folder when missing)."""

    WAL_TRIES = 600  # ~30 s of retries (see `_enable_wal`)

    def _enable_wal(self) -> None:
        """Switch the file to WAL. Two processes opening a new file at once can deadlock on this
        switch (each holds a shared lock and wants the exclusive one), and SQLite then answers
        "database is locked" at once instead of calling the busy handler: retry with jitter."""
        for attempt in range(self.WAL_TRIES):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == self.WAL_TRIES - 1:
                    raise
                time.sleep(0.01 + random.random() * 0.08)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes (`--shard i/N` jobs) may share the file: WAL lets readers run beside
        # the one writer, and the 60 s busy timeout makes a writer wait its turn, not fail.
        self.db = sqlite3.connect(str(self.path), timeout=60.0)
        self.db.execute("PRAGMA busy_timeout=60000")
        self._enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
        self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL)")
        self.db.commit()
        # Migrations under a write lock, re-read inside it: two processes opening a new file at the
        # same moment apply each migration once.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            done = {row[0] for row in self.db.execute("SELECT name FROM migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    self.db.execute(sql)
                    self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    def lookup(self, keys: Iterable[str]) -> dict[str, Cached]:
        """The cached responses among `keys` (in batches of 500 keys per query)."""
        keys = list(keys)
        out: dict[str, Cached] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, content, t_in, t_out in self.db.execute(
                f"SELECT key, content, tokens_in, tokens_out FROM responses WHERE key IN ({marks})", chunk
            ):
                out[key] = Cached(content, t_in or 0, t_out or 0)
        return out

    def put(self, key: str, *, model: str, prompt: str, prompt_hash: str, params: dict[str, Any],
            rendered: str, content: str | None, tokens_in: int, tokens_out: int, base_url: str,
            commit: bool = True) -> None:
        """Store one completed response and commit at once (or with the next `commit()`)."""
        self.db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (key, model, prompt, prompt_hash, json.dumps(params, sort_keys=True),
             zlib.compress(rendered.encode(), 1), content, tokens_in, tokens_out, base_url, time.time()),
        )
        if commit:
            self.db.commit()

    def record_run(self, wall_s: float, rows: int) -> tuple[float, int]:
        """Record one run over this cache; (wall seconds summed over every recorded run, their count)."""
        self.db.execute("INSERT INTO runs VALUES (?, ?, ?)", (time.time(), wall_s, rows))
        self.db.commit()
        total, n = self.db.execute("SELECT COALESCE(SUM(wall_s), 0), COUNT(*) FROM runs").fetchone()
        return float(total), int(n)

    def commit(self) -> None:
        self.db.commit()

    def inputs(self) -> list[str]:
        """Every cached rendered input (for audits and tests)."""
        return [zlib.decompress(b).decode() for (b,) in self.db.execute("SELECT input FROM responses")]

    def close(self) -> None:
        self.db.close()
