"""Low-rank query directions (`--query-rank`): exact algebra of the factors, scores along the
truncated direction, the full-rank limit, token scores, and the cached file round trip."""

from __future__ import annotations

import shutil

import pytest
import torch

from curate.influence.batches import make_batches
from curate.influence.capture import select_modules
from curate.influence.directions import LowRank, concat, from_tensors, to_tensors, truncate
from curate.influence.factors import ModuleFactors, eigenbases, fit_covariances, fit_lambdas
from curate.influence.scoring import query_gradient_sums, score_batches, split_functions
from curate.influence.token_scores import token_scores
from tests.tiny import random_examples, tiny_llama


@pytest.fixture(scope="module")
def setup():
    """A float64 tiny Llama with biased MLPs, fitted factors and dense directions [3, out, in']."""
    model = tiny_llama(bias=True)
    modules = select_modules(model, "mlp")
    train = random_examples(8, seed=1)
    batches = make_batches(train, batch_tokens=40, pad_id=0)
    covs = fit_covariances(model, modules, batches, sample_seed=None)
    bases = {n: eigenbases(c) for n, c in covs.items()}
    lams = fit_lambdas(model, modules, batches, bases, sample_seed=None)
    queries = random_examples(6, seed=5, prefix="q")
    sums = query_gradient_sums(model, modules, make_batches(queries, 30, 0), [0, 1] * 3, 2, per_token=False)
    dense = {}
    for n in modules:
        f = ModuleFactors(bases[n][0], bases[n][1], lams[n][0] / lams[n][1])
        dense[n] = f.precondition(split_functions(sums[n], [3, 3]), f.damping("auto"))
    return model, modules, train, batches, dense


def _svd_truncated(v: torch.Tensor, rank: int) -> torch.Tensor:
    """Independent reference: each V_f with all but its `rank` largest singular values zeroed."""
    out = []
    for m in v:
        u, s, vh = torch.linalg.svd(m)
        s = s.clone()
        s[rank:] = 0
        out.append(u[:, : len(s)] @ torch.diag(s) @ vh[: len(s)])
    return torch.stack(out)


def test_factors_are_the_best_rank_r_approximation(setup):
    *_, dense = setup
    for v in dense.values():
        low = truncate(v, 2)
        assert isinstance(low, LowRank) and low.shape == v.shape and low.rank == 2
        torch.testing.assert_close(low.dense(), _svd_truncated(v, 2), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(low[1], low.dense()[1])  # int index: one dense matrix
        assert low[[0, 2]].shape == (2, *v.shape[1:])
        assert truncate(v, min(v.shape[1:])) is v  # no smaller as factors: kept dense


def test_low_rank_scores_equal_scores_along_the_truncated_direction(setup):
    model, modules, train, batches, dense = setup
    for rank in (1, 3):
        low = {n: truncate(v, rank) for n, v in dense.items()}
        reference = {n: _svd_truncated(v, rank) for n, v in dense.items()}
        got = score_batches(model, modules, batches, low, len(train), per_token=False)
        want = score_batches(model, modules, batches, reference, len(train), per_token=False)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_rank_error_shrinks_to_zero_at_full_rank(setup):
    """Exact scores are the limit: the error falls with the rank and vanishes at min(out, in')."""
    model, modules, train, batches, dense = setup
    exact = score_batches(model, modules, batches, dense, len(train), per_token=False)

    def error(rank_of) -> float:
        low = {n: LowRank(*_factors(v, rank_of(v))) for n, v in dense.items()}
        got = score_batches(model, modules, batches, low, len(train), per_token=False)
        return float((got - exact).norm() / exact.norm())

    errors = [error(lambda v, r=r: min(r, min(v.shape[1:]) - 1)) for r in (1, 4, 10**6)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert error(lambda v: min(v.shape[1:])) < 1e-9  # every singular vector kept: exact


def _factors(v: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    return u[..., :rank] * s[..., None, :rank], vh[..., :rank, :]


def test_token_scores_along_low_rank_directions_sum_to_its_instance_scores(setup):
    model, modules, train, batches, dense = setup
    low = {n: truncate(v, 2) for n, v in dense.items()}
    instance = score_batches(model, modules, batches, low, len(train), per_token=False)
    tokens = token_scores(model, modules, batches, low, len(train))
    for i in range(len(train)):
        torch.testing.assert_close(tokens[i].sum(dim=1), instance[i], rtol=1e-5, atol=1e-10)


def test_tensor_round_trip_and_concat(setup):
    *_, dense = setup
    mixed = {n: truncate(v, 2) if k % 2 else v for k, (n, v) in enumerate(dense.items())}
    back = from_tensors(to_tensors(mixed))
    assert back.keys() == mixed.keys()
    for n, v in mixed.items():
        a = v.dense() if isinstance(v, LowRank) else v
        b = back[n].dense() if isinstance(back[n], LowRank) else back[n]
        assert type(back[n]) is type(v) and torch.equal(a, b)
    low = next(v for v in mixed.values() if isinstance(v, LowRank))
    both = concat(low, low)
    assert both.shape == (2 * low.shape[0], *low.shape[1:])
    with pytest.raises(TypeError):
        concat(low, low.dense())


def test_score_pool_with_query_rank_caches_factors_and_reuses_them(tmp_path):
    """End to end: `query_rank` keeps rank-R factors in the cached directions file, the scores are
    those along the truncated directions of the exact run, and a rerun reuses the file."""
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool
    from curate.stages import load_tensors
    from tests.tiny import add_example, tiny_chat_llama

    model, tok = tiny_chat_llama()
    pool = [add_example(i, f"{i} plus {i} is {2 * i}." + " Check." * (i % 3)) for i in range(6)]
    queries = {"q": [add_example(20, "It is 40."), add_example(21, "42.")]}
    common = dict(model="tiny", dtype="float64", batch_tokens=64, query_splits=0)
    exact = score_pool(pool, queries, ScoreConfig(**common), tmp_path / "a", model=model, tokenizer=tok)
    shutil.copytree(tmp_path / "a" / "factors", tmp_path / "b" / "factors")  # same factors, new directions
    low = score_pool(pool, queries, ScoreConfig(**common, query_rank=2), tmp_path / "b", model=model, tokenizer=tok)
    (dense_file,), (factored_file,) = ((tmp_path / w / "queries").glob("*.safetensors") for w in "ab")
    dense, factored = from_tensors(load_tensors(dense_file)), load_tensors(factored_file)
    assert factored and all(v.shape[2] == 2 for k, v in factored.items() if k.endswith("::u"))
    assert all(not k.endswith("::u") for k in load_tensors(dense_file))
    assert "(rank 2)" in low.plan.render()
    again = score_pool(pool, queries, ScoreConfig(**common, query_rank=2), tmp_path / "b", model=model, tokenizer=tok)
    assert again.table.equals(low.table)
    # the same scores as the exact directions truncated by hand, scored by the engine's own pass
    from curate.influence.batches import make_batches
    from curate.influence.capture import select_modules
    from curate.influence.tokens import tokenize_all

    items = list(tokenize_all(tok, pool, None))
    batches = make_batches(items, 64, tok.pad_token_id)
    truncated = {n: _svd_truncated(v, 2) for n, v in dense.items()}
    want = score_batches(model, select_modules(model, "mlp"), batches, truncated, len(items), per_token=False)
    got = low.table["curate_influence_q"].to_numpy()
    assert abs(got - want[:, 0].numpy()).max() <= 1e-9 * abs(want).max()
    assert abs(got - exact.table["curate_influence_q"].to_numpy()).max() > 1e-6 * abs(want).max()


def test_plan_for_a_7b_model_suggests_a_query_rank():
    """The plan of a Qwen2.5-7B-shaped model (built on the meta device: no memory) prices the exact
    directions at ~23 GB per query function and suggests --query-rank 64."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from curate.influence.capture import select_modules
    from curate.influence.config import ScoreConfig
    from curate.influence.plan import GB, group_modules, make_plan

    config = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    modules = select_modules(model, "mlp")
    assert len(modules) == 84
    queries = {"math": [None] * 100, "code": [None] * 100}

    def plan(rank):
        settings = ScoreConfig(model="qwen", query_splits=2, query_rank=rank)
        return make_plan(model, modules, group_modules(modules, settings.group_memory_gb), settings, [], [], queries, 4096)

    exact, low = plan(None), plan(64)
    assert exact.direction_bytes / 6 / GB == pytest.approx(84 * 3584 * 18944 * 4 / GB)  # ~21.2 GiB per function
    assert low.direction_bytes == exact.hint_bytes == 6 * 84 * 64 * (3584 + 18944) * 4
    assert "--query-rank 64" in exact.render() and "hint" not in low.render() and "(rank 64)" in low.render()
