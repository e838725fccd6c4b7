"""Every command that writes a dataset takes `--emit messages`, and TRL's SFTTrainer trains on the
output as written: one real optimizer step per command, on a tiny Llama."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.demo import QUERY_SETS, SAMPLE

POOL_ROWS = 12  # 6 math, 6 code: every op has something to act on


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    rows = [json.loads(line) for line in (SAMPLE / "pool.jsonl").read_text().splitlines()]
    math = [r for r in rows if r["level"] is not None][:6]
    code = [r for r in rows if r["level"] is None][:6]
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in math + code))
    return path


def sft_step(model_dir, data_file, tmp_path) -> float:
    """One SFTTrainer step on the written file, loaded with `datasets` and passed unchanged."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=str(data_file), split="train")
    assert "messages" in dataset.column_names and "conversations" not in dataset.column_names
    trainer = SFTTrainer(model=str(model_dir), train_dataset=dataset, args=SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, max_length=256,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True))
    trainer.train()
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(loss) == 1 and loss[0] > 0
    return loss[0]


def command_lines(pool, tiny_model_dir, tmp_path) -> dict[str, list[str]]:
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(QUERY_SETS["math"].read_text().splitlines(keepends=True)[:4]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"inputs:\n  pool: {pool}\nsteps:\n  - op: tag\n    offline: true\n"
                      "  - op: prune\n    strategy: length\n    keep: 0.5\n"
                      f"output: {tmp_path / 'unused.parquet'}\n")
    return {
        "tag": ["tag", str(pool), "--offline"],
        "score": ["score", str(pool), "--model", str(tiny_model_dir), "--query", f"math={queries}",
                  "--max-length", "256", "--fit-max-length", "256", "--query-splits", "0"],
        "flip": ["flip", str(pool), "--donor", str(SAMPLE / "donor.jsonl"), "--swap-frac", "0.5", "--domains", "math"],
        "prune": ["prune", str(pool), "--strategy", "length", "--keep", "0.5"],
        "strip": ["strip", str(pool)],
        "reweight": ["reweight", str(tmp_path / "weighted.jsonl"), "--by", "w"],
        "run": ["run", str(recipe)],
    }


@pytest.mark.parametrize("command", ["tag", "score", "flip", "prune", "strip", "reweight", "run"])
def test_emit_messages_trains_with_sft_trainer(command, small_pool, tiny_model_dir, tmp_path):
    rows = [json.loads(line) for line in small_pool.read_text().splitlines()]
    (tmp_path / "weighted.jsonl").write_text("".join(json.dumps(dict(r, w=1.0)) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    args = command_lines(small_pool, tiny_model_dir, tmp_path)[command]
    result = CliRunner().invoke(cli, [*args, "--emit", "messages", "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written and all(r["messages"][0]["role"] == "system" for r in written)  # the system prompt folded in
    assert all(k == "messages" or k.startswith("curate_") for r in written for k in r)
    sft_step(tiny_model_dir, out, tmp_path)
