"""One prepared GPU check (run through scripts/gpu_check.sh): every GPU path of curate, in one go.

On a machine with one NVIDIA GPU, no network, and torch / transformers / accelerate installed
(the rest of curate's dependencies as wheels), it runs, in at most ~8 minutes:

  score-device   `curate score` of 16 sample rows with SmolLM2 on CUDA and on CPU (float32,
                 empirical Fisher): Pearson between the two score columns (expect > 0.9999);
  score-bf16     the same on CUDA in bfloat16 against float32: Spearman (expect > 0.98);
  kronfluence    benchmarks/bench_influence.py on CUDA (SmolLM2, 64 x 8 x 128 tokens): training
                 tokens/s of curate end to end and of kronfluence (fit + score), their ratio, and
                 the Pearson of their scores (needs kronfluence; else skipped, said so);
  sft-bf16       a 20-step TRL SFT of SmolLM2 in bfloat16 on the sample pool: first and last loss;
  vllm           `curate query --engine vllm` on 8 GSM8K problems (when vllm is importable).

It prints one table, `check | result | detail`, one row per check (`FAILED: <why>` or `skipped:
<why>` in the result column), and writes it as JSON to $OUT/gpu_check.json when OUT is set.
`--dry-run` checks every step's command and inputs without a GPU and prints the commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "curate" / "resources" / "sample"
PY = sys.executable


def curate(*args: str) -> list[str]:
    return [PY, "-m", "curate", *args]


def score_cmd(pool: Path, out: Path, device: str, dtype: str) -> list[str]:
    return curate("score", str(pool), "--model", "smollm2-135m", "--query", f"math={SAMPLE / 'queries' / 'math.jsonl'}",
                  "--device", device, "--dtype", dtype, "--fisher", "empirical", "--fit-max-length", "1024",
                  "--max-length", "1024", "--query-splits", "0", "-o", str(out))


def steps(work: Path) -> list[tuple[str, list[str], list[Path]]]:
    """(check, command, input files) per step; the subset pool is written by `prepare`."""
    pool = work / "pool16.jsonl"
    return [
        ("score-device", score_cmd(pool, work / "cuda.parquet", "cuda", "float32"), [pool]),
        ("score-device-cpu", score_cmd(pool, work / "cpu.parquet", "cpu", "float32"), [pool]),
        ("score-bf16", score_cmd(pool, work / "bf16.parquet", "cuda", "bfloat16"), [pool]),
        ("kronfluence", [PY, str(ROOT / "benchmarks" / "bench_influence.py"), "--model", "smollm2", "--train", "64",
                         "--query", "8", "--length", "128", "--methods", "curate_e2e,kf_fit,kf_score", "--device",
                         "cuda", "--json", str(work / "kf.json")], [ROOT / "benchmarks" / "bench_influence.py"]),
        ("sft-bf16", [PY, str(Path(__file__).resolve()), "--_sft", str(work / "sft")], [SAMPLE / "pool.jsonl"]),
        ("vllm", curate("query", "--engine", "vllm", "--model", "smollm2-135m", "--bench", "gsm8k", "--limit", "8",
                        "--max-new-tokens", "128", "-o", str(work / "vllm")), []),
    ]


SFT_CONFIG = dict(max_steps=20, batch_size=4, dtype="bfloat16", device="cuda", max_length=1024, learning_rate=1e-5,
                  save_steps=20)


def sft(out: str) -> None:
    """The sft-bf16 step (in its own process): 20 TRL steps of SmolLM2 on the sample pool; prints
    the first and last loss and the seconds as JSON."""
    from curate.data import load_pool
    from curate.training import TrainConfig, train_variant

    started = time.perf_counter()
    result = train_variant("smollm2-135m", load_pool(str(SAMPLE / "pool.jsonl")), TrainConfig(**SFT_CONFIG), Path(out))
    curve = result.loss_curve
    print(json.dumps({"first": curve[0][1], "last": curve[-1][1], "seconds": time.perf_counter() - started}))


def prepare(work: Path) -> None:
    """The 16 shortest sample rows (8 math, 8 code) as the scored pool."""
    rows = [json.loads(x) for x in (SAMPLE / "pool.jsonl").read_text().splitlines()]
    math, code = rows[:48], rows[48:]
    pick = sorted(math, key=lambda r: len(json.dumps(r)))[:8] + sorted(code, key=lambda r: len(json.dumps(r)))[:8]
    (work / "pool16.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pick))


def column(path: Path) -> list[float]:
    import polars as pl

    return pl.read_parquet(path).sort("curate_id")["curate_influence_math"].to_list()


def run(name: str, cmd: list[str], log: Path) -> str:
    env = {**os.environ, "CURATE_THREADS": os.environ.get("CURATE_THREADS", "4")}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env, cwd=ROOT, timeout=480)
    if done.returncode != 0:
        raise RuntimeError(f"{name} exited {done.returncode} (see {log})")
    return done.stdout


def check_all(work: Path) -> list[dict]:
    import polars as pl

    log = work / "gpu_check.log"
    rows, plan = [], {name: cmd for name, cmd, _ in steps(work)}

    def record(check: str, result: str, detail: str = "") -> None:
        rows.append({"check": check, "result": result, "detail": detail})

    def guarded(check: str, fn) -> None:
        started = time.perf_counter()
        try:
            fn()
        except Exception as err:  # one failed check must not hide the others
            record(check, f"FAILED: {err}", f"{time.perf_counter() - started:.0f} s")

    def score() -> None:
        for name in ("score-device", "score-device-cpu", "score-bf16"):
            run(name, plan[name], log)
        cuda, cpu, bf16 = (column(work / f"{d}.parquet") for d in ("cuda", "cpu", "bf16"))
        frame = pl.DataFrame({"cuda": cuda, "cpu": cpu, "bf16": bf16})
        pearson = frame.select(pl.corr("cuda", "cpu")).item()
        spearman = frame.select(pl.corr("cuda", "bf16", method="spearman")).item()
        rel = (frame["bf16"] - frame["cuda"]).abs().max() / frame["cuda"].abs().max()
        record("score cuda vs cpu (float32)", f"Pearson {pearson:.6f}", f"{len(cuda)} rows, SmolLM2, empirical Fisher")
        record("score bfloat16 vs float32 (cuda)", f"Spearman {spearman:.4f}", f"max |diff| / max |score| {rel:.3g}")

    def kronfluence() -> None:
        if importlib.util.find_spec("kronfluence") is None:
            record("curate vs kronfluence (cuda)", "skipped: kronfluence is not installed")
            return
        run("kronfluence", plan["kronfluence"], log)
        res = json.loads((work / "kf.json").read_text())["smollm2"]
        tokens = 64 * 128
        ours, theirs = res["curate_e2e"]["seconds"], res["kf_fit"]["seconds"] + res["kf_score"]["seconds"]
        pearson = next((v for k, v in res.items() if k.startswith("pearson_")), float("nan"))
        record("curate vs kronfluence (cuda)", f"{tokens / ours:.0f} vs {tokens / theirs:.0f} tokens/s "
               f"({ours / theirs:.2f}x the time)", f"Pearson {pearson:.6f}; 64 x 8 x 128, SmolLM2")

    def sft() -> None:
        out = json.loads(run("sft-bf16", plan["sft-bf16"], log).strip().splitlines()[-1])
        record("TRL SFT, bfloat16, 20 steps", f"loss {out['first']:.3f} -> {out['last']:.3f}",
               f"{out['seconds']:.0f} s, SmolLM2 on the sample pool")

    def vllm() -> None:
        if importlib.util.find_spec("vllm") is None:
            record("vLLM generation", "skipped: vllm is not importable")
            return
        started = time.perf_counter()
        run("vllm", plan["vllm"], log)
        summary = json.loads((work / "vllm" / "summary.json").read_text())
        record("vLLM generation", f"{summary['graded']} answers graded, accuracy {summary['accuracy']:.0%}",
               f"{time.perf_counter() - started:.0f} s including the server's start")

    for check, fn in (("score", score), ("kronfluence", kronfluence), ("sft", sft), ("vllm", vllm)):
        guarded(check, fn)
    return rows


def dry_run(work: Path) -> list[dict]:
    """Every step's command, with its inputs and the tools it needs checked: curate commands are
    parsed by their own options (choices, types, required), the SFT settings built, the model
    alias resolved; nothing heavy runs."""
    from curate.cli import cli
    from curate.models import check_model
    from curate.training import TrainConfig

    rows = []
    check_model("smollm2-135m")
    TrainConfig(**SFT_CONFIG)
    for name, cmd, inputs in steps(work):
        missing = [str(p) for p in inputs if not p.exists()]
        if cmd[1:3] == ["-m", "curate"]:
            import click

            command = cli.get_command(click.Context(cli), cmd[3])
            try:
                command.make_context(cmd[3], list(cmd[4:]))
            except click.ClickException as err:
                missing.append(f"bad command: {err.format_message()}")
        if name == "kronfluence" and importlib.util.find_spec("kronfluence") is None:
            missing.append("kronfluence (pip install --no-deps kronfluence==1.0.1; the check is skipped without it)")
        if name == "vllm" and importlib.util.find_spec("vllm") is None:
            missing.append("vllm (the check is skipped without it)")
        rows.append({"check": name, "result": "ready" if not missing else "missing: " + "; ".join(missing),
                     "detail": " ".join(cmd).replace(str(work), "$WORK")})
    return rows


def table(rows: list[dict]) -> str:
    width = max(len(r["check"]) for r in rows)
    lines = [f"{'check':{width}} | result | detail", f"{'-' * width}-|--------|-------"]
    return "\n".join(lines + [f"{r['check']:{width}} | {r['result']} | {r['detail']}" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check commands and inputs, run nothing on a GPU")
    parser.add_argument("--_sft", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._sft:
        sft(args._sft)
        return
    with tempfile.TemporaryDirectory(prefix="curate-gpu-check-") as tmp:
        work = Path(tmp)
        prepare(work)
        if not args.dry_run:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the plan without one)")
        rows = dry_run(work) if args.dry_run else check_all(work)
        print(table(rows))
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(rows, indent=2))
            log = work / "gpu_check.log"
            if log.exists():
                Path(os.environ["OUT"], "gpu_check.log").write_text(log.read_text())


if __name__ == "__main__":
    main()
