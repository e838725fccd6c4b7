"""scripts/gpu_check.sh --dry-run: every step's command and inputs checked without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("score-device", "score-device-cpu", "score-bf16", "kronfluence", "sft-bf16", "vllm")


def test_dry_run_checks_every_step(tmp_path):
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["check"] for r in rows] == list(CHECKS)
    for r in rows:
        assert r["result"] == "ready" or (r["check"] in ("kronfluence", "vllm") and "skipped without it" in r["result"])
    assert done.stdout.splitlines()[0].split(" | ") == ["check           ", "result", "detail"]
    assert "--device cuda --dtype bfloat16" in next(r["detail"] for r in rows if r["check"] == "score-bf16")


def test_dry_run_finds_a_bad_command(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    good = gpu_check.steps

    def broken(work):
        return [(n, [*c, "--dtype", "float8"] if n == "score-bf16" else c, i) for n, c, i in good(work)]

    monkeypatch.setattr(gpu_check, "steps", broken)
    gpu_check.prepare(tmp_path)
    rows = {r["check"]: r["result"] for r in gpu_check.dry_run(tmp_path)}
    assert rows["score-bf16"].startswith("missing: bad command") and "float8" in rows["score-bf16"]
    assert rows["score-device"] == "ready"
