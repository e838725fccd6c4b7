"""The registry of operations: the one place an operation is wired.

Each `Operation` names its config class (whose `curate.settings` metadata is the only source of
its options, defaults, recipe keys and docs), the inputs it reads besides the pool, and one
function with one call shape:

    run(pool: Pool, inputs: dict[str, Pool | dict[str, Pool]], config, context: OpContext) -> OpResult

`curate.cli.operation` builds each command from its entry, `curate.recipes` checks and runs recipe
steps from it, and `curate demo` calls ops through it. Entries name classes and functions as
"module:attribute" strings, so listing the commands (`curate --help`) imports none of them.

Adding an operation: write its module (a frozen config dataclass declared with `setting(...)`
and a `run` function of the shape above, pure: columns in, rows out), then add one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OpInput:
    """A pool an operation reads besides the one it transforms.

    `name`: the recipe key and the key in `inputs`. `many`: a set of named pools (the command line
    takes `flag NAME=PATH` repeatedly; a recipe a list of input names, which become the names);
    otherwise one pool (`flag PATH`; a recipe, one input name). `donor`: loaded as a donor pool."""

    name: str
    help: str
    flag: str
    many: bool = False
    required: bool = True
    donor: bool = False


@dataclass(frozen=True)
class Operation:
    """One operation. `summary`: one line (`curate --help`); `description`: the rest of its
    command's help. `config` and `run` are "module:attribute"; `command` (optional) names a
    dataclass of settings the command line has but recipes do not (declared with `setting`
    too), and `cli` a function that runs the command in place of the default (see
    `curate.cli.operation`). `also`: a recipe step may apply it, with the same settings, to other
    inputs too (`also: [names]`), which later steps then see in place of the originals.
    `output_required`: the command needs `-o` (tag does not when it only exports batch requests)."""

    name: str
    summary: str
    description: str
    config: str
    run: str
    inputs: tuple[OpInput, ...] = ()
    command: str | None = None
    cli: str | None = None
    also: bool = False
    output_required: bool = True

    @property
    def config_class(self) -> type:
        return _resolve(self.config)

    @property
    def command_class(self) -> type | None:
        return _resolve(self.command) if self.command else None

    def __call__(self, pool, inputs: dict[str, Any], config, context=None, **extra: Any):
        """Run the operation (`context`: an `OpContext`, default: no progress, no work folder;
        `extra`: keywords the op's function takes besides, e.g. score's already loaded `model`)."""
        from curate.results import OpContext

        return _resolve(self.run)(pool, inputs, config, context or OpContext(), **extra)

    def own_decontamination(self) -> bool:
        """Whether the config has its own `decontaminate` (else commands add it as an output option)."""
        import dataclasses

        return any(f.name == "decontaminate" for f in dataclasses.fields(self.config_class))


def _resolve(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("tag", "Tag domain, difficulty and cognitive behaviours with an LLM (or offline rules).", "",
              "curate.tagging.config:TagConfig", "curate.tagging.operation:run",
              command="curate.cli.tag:TagCommand", cli="curate.cli.tag:tag", also=True, output_required=False),
    Operation("score", "Score every example by EK-FAC influence on query sets.", "",
              "curate.influence.config:ScoreConfig", "curate.influence.output:run",
              (OpInput("queries", "A query set: any pool shape; the last (assistant) turn is the answer whose "
                       "likelihood counts. One score column per set.", "--query", many=True),),
              command="curate.cli.score:ScoreCommand", cli="curate.cli.score:score"),
    Operation("flip", "Difficulty flip: harder math in, easier code in, from a donor pool.",
              "Replace POOL's easiest math with harder donor math and its hardest code with easier donor code, "
              "keeping the size and domain counts. Writes before/after histograms to the card and a PNG.",
              "curate.ops.flip:FlipConfig", "curate.ops.flip:run",
              (OpInput("donor", "Donor pool (any shape; OpenThoughts metadata rows are rendered into the pool's).",
                       "--donor", donor=True),)),
    Operation("prune", "Keep the top fraction of a pool by influence or a baseline.",
              "Keep the best rows of POOL; write them in POOL's schema with a manifest of every dropped row.",
              "curate.ops.prune:PruneConfig", "curate.ops.prune:run",
              command="curate.cli.prune:PruneCommand", cli="curate.cli.prune:prune"),
    Operation("reweight", "Repeat or drop rows by a weight column (shift a mixture).",
              "Each row of POOL appears floor(w) times plus once more with probability frac(w); weight 0 drops "
              "it. Copies get ids `<curate_id>#w<k>`; the manifest lists every copy and drop.",
              "curate.ops.reweight:ReweightConfig", "curate.ops.reweight:run"),
    Operation("strip", "Remove post-answer exploration from reasoning traces.",
              "Delete post-answer exploration segments from the thoughts of POOL's traces; write the pool in its "
              "own schema, stripped rows under new ids `<id>~strip`, with a manifest of every replaced row. Every "
              "result is checked to be a pure deletion that keeps the final answer, else the row is kept.",
              "curate.ops.strip:StripConfig", "curate.ops.strip:run",
              command="curate.cli.strip:StripCommand", cli="curate.cli.strip:strip"),
)}


def reference() -> str:
    """Markdown: every operation with its inputs and settings (recipe key, flag, meaning), made from
    the registry alone; docs/operations.md holds it (`python scripts/docs_operations.py`)."""
    from curate.settings import describe

    lines = []
    for op in OPERATIONS.values():
        lines += [f"### `{op.name}`", "", op.summary + (f" {op.description}" if op.description else ""), "",
                  "| recipe key | flag | meaning |", "|---|---|---|"]
        for i in op.inputs:
            how = "input names (a list); `NAME=PATH`, repeatable" if i.many else "an input name; a path"
            lines.append(f"| `{i.name}` | `{i.flag}` | {i.help} ({how}{'; required' if i.required else ''}) |")
        if op.also:
            lines.append("| `also` | - | Other inputs given the same step, with the same settings; later steps see "
                         "their results in their place (input names) |")
        lines += [f"| {key} | {flag} | {text.replace('|', '/')} |" for key, flag, text in describe(op.config_class)]
        if op.command_class:
            lines += [f"| - | {flag} | {text.replace('|', '/')} |" for _, flag, text in describe(op.command_class)]
        lines.append("")
    return "\n".join(lines)

