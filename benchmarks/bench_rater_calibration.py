# Run: .venv/bin/python benchmarks/bench_rater_calibration.py [--rows 30] [--max-tokens 48]
"""Calibrate a real (small) rater on the bundled sample: SmolLM2-135M-Instruct answering the
difficulty prompt, served over the OpenAI API by tests/openai_server.py with its replies generated
by transformers (greedy), then `curate tag --calibrate N --tasks difficulty` against it.

This measures what `curate tag --calibrate` reports for the smallest rater this machine can run,
not a capable one: the figures are the baseline a real rater must beat (see prompts/README.md for
the command to re-measure with a served model). One thread, no network.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from curate.models import load_model  # noqa: E402
from tests import openai_server  # noqa: E402
from tests.openai_server import FakeOpenAI  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model("smollm2-135m")

    def reply(content: str, unparseable: float = 0.0) -> str:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    openai_server.reply_text = reply
    sample = ROOT / "curate" / "resources" / "sample" / "pool.jsonl"
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as server:
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "curate", "tag", str(sample), "-o", f"{tmp}/out.jsonl", "--base-url", server.url,
               "--model", "smollm2-135m-instruct", "--tasks", "difficulty", "--calibrate", str(args.rows),
               "--max-tokens", str(args.max_tokens), "--concurrency", "1", "--structured", "off"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CURATE_THREADS": "1"})
        wall = time.perf_counter() - started
        replies = [r["body"] for r in server.requests]
        rows = [json.loads(x) for x in Path(f"{tmp}/out.jsonl").read_text().splitlines()]
        raw = [json.loads(r["curate_tag_errors"])["difficulty"]["raw"] for r in rows if r.get("curate_tag_errors")]
    print(f"$ curate tag SAMPLE --tasks difficulty --calibrate {args.rows} --max-tokens {args.max_tokens} "
          f"--structured off  (SmolLM2-135M-Instruct, greedy, served locally)")
    print(done.stderr.split("calibration:", 1)[-1].strip() if "calibration:" in done.stderr else done.stderr[-3000:])
    print(f"\n{len(replies)} requests, {wall:.0f} s wall (exit {done.returncode})")
    for text in raw[:2]:
        print("an unparsed reply:", " ".join((text or "").split())[:300])


if __name__ == "__main__":
    main()
