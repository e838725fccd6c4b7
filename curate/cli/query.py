"""`curate query`: query sets of the benchmark problems a model answers correctly and incorrectly."""

from __future__ import annotations

from collections.abc import Callable

import click


def engine_options(command: Callable) -> Callable:
    """--engine, --base-url, --api-key-env and --concurrency: how a command generates answers."""
    for option in reversed([
        click.option("--engine", type=click.Choice(["auto", "hf", "server", "vllm"]), default="auto", show_default=True,
                     help="hf: transformers in this process; server: the OpenAI-compatible endpoint --base-url "
                          "(vLLM, SGLang, llama.cpp); vllm: curate starts `vllm serve` for the run and stops it "
                          "after; auto: server with --base-url, else vllm when the vllm executable and a GPU are "
                          "there, else hf."),
        click.option("--base-url", help="The endpoint (…/v1) of --engine server."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
                     help="Environment variable holding the endpoint's key (never written anywhere)."),
        click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Requests in flight through a server."),
    ]):
        command = option(command)
    return command


def resolve_engine(engine: str, base_url: str | None) -> str:
    """The engine `auto` means here, and a check that --base-url goes with --engine server."""
    from curate.errors import UsageError

    if engine == "auto":
        from curate.evaluation.vllm import vllm_available

        engine = "server" if base_url else "vllm" if vllm_available() else "hf"
    if (engine == "server") != bool(base_url):
        raise UsageError("--engine server needs --base-url (and --base-url needs --engine server)")
    return engine


@click.command()
@click.option("--model", required=True, help="Model path, Hub id or alias (smollm2-135m).")
@click.option("--bench", required=True, metavar="PATH_OR_NAME",
              help="gsm8k, math500, humaneval, mbpp (packaged 20-problem slices), a local file or a Hub id.")
@click.option("-o", "--output", "out", required=True, help="Output folder.")
@click.option("--n", type=int, default=100, show_default=True, help="Rows kept per set at most (seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --n and --limit sampling.")
@click.option("--answers", type=click.Choice(["model", "reference"]), default="model", show_default=True,
              help="Assistant turn: the model's own verified answer, or the benchmark's reference solution.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True, help="Tokens per greedy answer.")
@click.option("--limit", type=int, help="Grade only a seeded subset of this many problems.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts per generate call.")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True,
              help="Seconds per sandboxed code run.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda:1, ... (hf).")
@engine_options
def query(model, bench, out, engine, base_url, api_key_env, concurrency, **settings) -> None:
    """Generate and grade answers to a benchmark, then write DIR/correct.jsonl and DIR/incorrect.jsonl
    (messages rows for `curate score --query NAME=DIR/correct.jsonl`) and DIR/summary.json.

    \b
    With a serving engine (answers cached in DIR/generations.sqlite; a killed run resumes):
      vllm serve Qwen/Qwen2.5-1.5B-Instruct --port 8000 &
      curate query --engine server --base-url http://localhost:8000/v1 \\
          --model Qwen/Qwen2.5-1.5B-Instruct --bench gsm8k -o queries/"""
    from curate.cli import quiet_third_party_progress
    from curate.evaluation import ServerSettings, build_query_sets
    from curate.progress import RichProgress

    engine = resolve_engine(engine, base_url)
    server = ServerSettings(base_url, model, api_key_env, concurrency) if engine == "server" else None
    quiet_third_party_progress()
    summary = build_query_sets(model, bench, out, engine=engine, server=server, progress=RichProgress(), **settings)
    counts, sampled = summary["counts"], summary["sampled"]
    click.echo(f"graded {summary['graded']}: accuracy {summary['accuracy']:.1%}; "
               f"correct {counts['correct']} (kept {sampled['correct']}), "
               f"incorrect {counts['incorrect']} (kept {sampled['incorrect']}); "
               f"sandbox: {', '.join(summary['isolation'] or ['not used'])}", err=True)
    if not sampled["correct"]:
        click.echo("warning: no problem was answered correctly; correct.jsonl is empty", err=True)
    click.echo(out)
