"""EK-FAC and scores against dense ground truth on a float64 tiny Llama."""

from __future__ import annotations

import pytest
import torch

from curate.influence.batches import make_batches
from curate.influence.capture import select_modules
from curate.influence.factors import ModuleFactors, eigenbases, fit_covariances, fit_lambdas
from curate.influence.scoring import query_gradient_sums, score_batches, split_functions
from tests.tiny import autograd_example_grads, random_examples, tiny_llama


@pytest.fixture(scope="module", params=["fused-head", "model-head"])
def setup(request):
    """The model, its tracked modules and fit batches; every test runs twice: with the passes'
    own head (`head_logprobs`, one softmax for every label set) and with the model's logits, the
    path of a model that changes them after its head (as Gemma2's soft-cap does; here x 1.0)."""
    from curate.logits import returns_head_output

    model = tiny_llama(bias=True)
    if request.param == "model-head":
        def changed_after_the_head(module, args, output):
            output["logits"] = output.logits * 1.0
            return output

        model.register_forward_hook(changed_after_the_head)
    assert returns_head_output(model, model.get_output_embeddings()) is (request.param == "fused-head")
    modules = select_modules(model, "mlp")
    train = random_examples(10, seed=1)
    batches = make_batches(train, batch_tokens=40, pad_id=0)
    assert len(batches) > 1 and any(b.input_ids.shape[0] > 1 for b in batches)
    return model, modules, train, batches


def _fit(model, modules, batches, sample_seed):
    covs = fit_covariances(model, modules, batches, sample_seed=sample_seed)
    bases = {n: eigenbases(c) for n, c in covs.items()}
    lams = fit_lambdas(model, modules, batches, bases, sample_seed=sample_seed)
    return {n: ModuleFactors(bases[n][0], bases[n][1], lams[n][0] / lams[n][1]) for n in modules}


@pytest.mark.parametrize("sample_seed", [None, 7])
def test_lambda_is_dense_fisher_diagonal_in_eigenbasis(setup, sample_seed):
    model, modules, train, batches = setup
    factors = _fit(model, modules, batches, sample_seed)
    for name, f in factors.items():
        grads = torch.stack([autograd_example_grads(model, {name: modules[name]}, z, sample_seed=sample_seed)[name].flatten()
                             for z in train])
        fisher = grads.T @ grads / len(train)
        q = torch.kron(f.q_s, f.q_a)
        expected = torch.diagonal(q.T @ fisher @ q).view_as(f.lam)
        torch.testing.assert_close(f.lam, expected, rtol=1e-10, atol=1e-14)


def test_preconditioning_matches_dense_solve(setup):
    model, modules, train, batches = setup
    factors = _fit(model, modules, batches, None)
    gen = torch.Generator().manual_seed(3)
    for f in factors.values():
        g = torch.randn(*f.lam.shape, generator=gen, dtype=torch.float64)
        damping = f.damping("auto")
        q = torch.kron(f.q_s, f.q_a)
        dense = q @ torch.diag(f.lam.flatten()) @ q.T + damping * torch.eye(q.shape[0], dtype=torch.float64)
        expected = torch.linalg.solve(dense, g.flatten()).view_as(g)
        got = f.precondition(g, damping)
        assert (got - expected).norm() / expected.norm() < 1e-10


def test_covariances_count_all_non_padding_positions(setup):
    model, modules, train, batches = setup
    covs = fit_covariances(model, modules, batches, sample_seed=None)
    assert all(c.count == sum(len(z.input_ids) for z in train) for c in covs.values())


def test_scores_equal_autograd_gradient_dot_preconditioned_query(setup):
    model, modules, train, batches = setup
    factors = _fit(model, modules, batches, 11)
    queries = random_examples(7, seed=5, prefix="q")
    q_batches = make_batches(queries, batch_tokens=30, pad_id=0)
    split_of = [i % 3 for i in range(len(queries))]
    sizes = [split_of.count(k) for k in range(3)]
    sums = query_gradient_sums(model, modules, q_batches, split_of, 3, per_token=False)
    directions = {}
    for name, f in factors.items():
        funcs = split_functions(sums[name], sizes)  # [1 + 3, out, in']
        directions[name] = f.precondition(funcs, f.damping("auto"))
        # independent query gradient: autograd, averaged over the set
        mean = sum(autograd_example_grads(model, {name: modules[name]}, q)[name] for q in queries) / len(queries)
        torch.testing.assert_close(funcs[0], mean, rtol=1e-10, atol=1e-12)
    scores = score_batches(model, modules, batches, directions, len(train), per_token=False)
    for i, z in enumerate(train):
        g = autograd_example_grads(model, modules, z)
        expected = torch.stack([sum((directions[n][k] * g[n]).sum() for n in modules) for k in range(4)])
        torch.testing.assert_close(scores[i], expected, rtol=1e-6, atol=1e-12)
    # the full-set score is the size-weighted mean of the split scores
    weighted = (scores[:, 1:] * torch.tensor(sizes, dtype=torch.float64)).sum(1) / sum(sizes)
    torch.testing.assert_close(scores[:, 0], weighted, rtol=1e-10, atol=1e-12)


def test_scores_agree_across_attention_kernels():
    """The hook route needs no forward-mode AD, so SDPA (and flash kernels on GPUs) work as eager."""
    items = random_examples(6, seed=8)
    queries = random_examples(3, seed=9, prefix="q")
    results = []
    for impl in ("eager", "sdpa"):
        model = tiny_llama(seed=2)
        model.config._attn_implementation = impl
        modules = select_modules(model, "mlp")
        batches = make_batches(items, 40, pad_id=0)
        factors = _fit(model, modules, batches, None)
        sums = query_gradient_sums(model, modules, make_batches(queries, 40, 0), [0, 0, 0], 1, per_token=False)
        directions = {n: f.precondition(split_functions(sums[n], [3]), f.damping("auto")) for n, f in factors.items()}
        results.append(score_batches(model, modules, batches, directions, len(items), per_token=False))
    # eager attention takes its softmax in float32 even in a float64 model (~1e-7 relative)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-8)


def test_per_token_normalisation_divides_by_token_counts(setup):
    model, modules, train, batches = setup
    factors = _fit(model, modules, batches, None)
    queries = random_examples(4, seed=6, prefix="q")
    q_batches = make_batches(queries, 30, pad_id=0)
    directions = {}
    for per_token_query in (False, True):
        sums = query_gradient_sums(model, modules, q_batches, [0] * 4, 1, per_token=per_token_query)
        directions[per_token_query] = {n: f.precondition(split_functions(sums[n], [4]), f.damping("auto"))
                                       for n, f in factors.items()}
    summed = score_batches(model, modules, batches, directions[False], len(train), per_token=False)
    per_token = score_batches(model, modules, batches, directions[False], len(train), per_token=True)
    counts = torch.tensor([z.n_loss_tokens for z in train], dtype=torch.float64)
    # Not bit-exact: LlamaRMSNorm computes in float32 even in a float64 model, so rescaling the
    # backward seed by 1/|z| changes its rounding (~1e-7 relative).
    torch.testing.assert_close(per_token[:, 0], summed[:, 0] / counts, rtol=1e-5, atol=1e-12)
    # the per-token query objective weights each query example by 1/|y|
    expected = {}
    for name in modules:
        g = sum(autograd_example_grads(model, {name: modules[name]}, q)[name] / q.n_loss_tokens for q in queries) / 4
        expected[name] = factors[name].precondition(g, factors[name].damping("auto"))
        got = directions[True][name][0]
        assert (got - expected[name]).norm() / expected[name].norm() < 1e-5


@pytest.mark.parametrize("memory, disk", [("all", "none"), ("none", "none"), ("none", "all"), ("half", "all")])
def test_replayed_pairs_give_the_same_lambdas_as_a_second_pass(setup, tmp_path, memory, disk):
    """Pairs kept in memory, spilled to disk, or both, replay to the second pass's Lambda* sums;
    with neither budget the cache gives up and the model pass runs."""
    from curate.influence.passes import PairCache, SpilledBatch

    model, modules, train, batches = setup
    covs = fit_covariances(model, modules, batches, sample_seed=5)
    bases = {n: eigenbases(c) for n, c in covs.items()}
    direct = fit_lambdas(model, modules, batches, bases, sample_seed=5)
    everything = PairCache(10**12)
    fit_covariances(model, modules, batches, sample_seed=5, cache=everything)
    budgets = {"all": 10**12, "none": 0, "half": everything.bytes // 2}
    cache = PairCache(budgets[memory], tmp_path / "spill", budgets[disk])
    fit_covariances(model, modules, batches, sample_seed=5, cache=cache)
    on_disk = sum(isinstance(pairs, SpilledBatch) for _, pairs in cache.entries)
    assert cache.usable == (memory != "none" or disk != "none")
    assert on_disk == {"all": 0, "none": len(batches) if disk == "all" else 0,
                       "half": on_disk}[memory] and (memory != "half" or 0 < on_disk < len(batches))
    assert cache.bytes + cache.spilled == (everything.bytes if cache.usable else 0)
    replayed = fit_lambdas(model, modules, batches, bases, sample_seed=5, cache=cache)
    for n in modules:
        torch.testing.assert_close(replayed[n][0], direct[n][0], rtol=1e-12, atol=0)
        assert replayed[n][1] == direct[n][1]
    cache.close()
    assert not list(tmp_path.glob("spill/*"))


def _replayed(cache, label):
    pairs = []
    cache.replay(lambda batch: lambda n, s, a: pairs.append((batch.rows, n, s.clone(), a.clone())), label=label)
    return pairs


def _assert_same_pairs(got, expected):
    assert len(got) == len(expected)
    for (rows, n, s, a), (rows2, n2, s2, a2) in zip(got, expected, strict=True):
        assert rows == rows2 and n == n2
        assert torch.equal(s, s2) and torch.equal(a, a2)


@pytest.mark.parametrize("memory", ["all", "half", "none"])
def test_a_second_backward_keeps_the_scoring_pass_pairs(setup, tmp_path, memory):
    """True Fisher with `score_pairs`: the sampled-label backward's covariances and pairs are
    unchanged, and the data-label backward's pairs are exactly a data-label pass's (the scoring
    pass's), kept in memory or spilled to disk; `on_batch` sees the data labels' log-probs. A
    cache that gives up stops the second backward and leaves the covariances as they were."""
    from curate.influence.batches import response_logprobs
    from curate.influence.passes import PairCache

    model, modules, train, batches = setup
    sampled, data = PairCache(10**12), PairCache(10**12)
    plain = fit_covariances(model, modules, batches, sample_seed=5, cache=sampled)
    fit_covariances(model, modules, batches, sample_seed=None, cache=data)
    budget = {"all": 10**12, "half": (sampled.bytes + data.bytes) // 2, "none": 0}[memory]
    both = PairCache(budget, tmp_path / "spill", 0 if memory == "none" else 10**12)
    seen = []
    covs = fit_covariances(model, modules, batches, sample_seed=5, cache=both, score_pairs=True,
                           on_batch=lambda b, logp: seen.append((b, logp)))
    for n in modules:
        assert torch.equal(covs[n].a_sum, plain[n].a_sum) and torch.equal(covs[n].s_sum, plain[n].s_sum)
    if memory == "none":  # gave up after the first batch: the others ran one backward, sampled labels
        assert not both.usable
        with torch.no_grad():
            for b, logp in seen[1:]:
                torch.testing.assert_close(logp, response_logprobs(model, b, sample_seed=5)[0], rtol=0, atol=1e-12)
        return
    assert both.usable and (memory == "all") == (both.spilled == 0)
    # one a per pair: the cache holds the two passes' bytes less the second copy of each a
    a_bytes = sampled.bytes + data.bytes - (both.bytes + both.spilled)
    assert 0 < a_bytes < data.bytes
    _assert_same_pairs(_replayed(both, 0), _replayed(sampled, 0))
    _assert_same_pairs(_replayed(both, -1), _replayed(data, 0))
    for b, logp in seen:
        with torch.no_grad():
            torch.testing.assert_close(logp, response_logprobs(model, b)[0], rtol=0, atol=1e-12)
    both.close()
    assert not list(tmp_path.glob("spill/*"))


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_plan_bounds_the_pairs_kept(setup, fisher):
    """The plan's pair estimate is an upper bound of what the fit pass keeps, loose only by the
    inputs that gate and up share (counted per layer in the plan)."""
    from curate.influence.config import ScoreConfig
    from curate.influence.passes import PairCache
    from curate.influence.plan import group_modules, make_plan

    model, modules, train, batches = setup
    config = ScoreConfig(model="tiny", dtype="float64", fisher=fisher, query_splits=0)
    plan = make_plan(model, modules, group_modules(modules, 8.0), config, [], train, {}, None)
    cache = PairCache(10**12)
    fit_covariances(model, modules, batches, sample_seed=config.sample_seed, cache=cache, score_pairs=True)
    padded = sum(b.input_ids.numel() for b in batches) / sum(len(z.input_ids) for z in train)  # pairs keep padding
    assert cache.bytes / padded <= plan.pair_bytes <= 1.5 * cache.bytes / padded
    assert "replay: ~" in plan.render()


def test_token_scores_sum_to_instance_scores(setup):
    from curate.influence.token_scores import token_scores

    model, modules, train, batches = setup
    factors = _fit(model, modules, batches, None)
    queries = random_examples(4, seed=13, prefix="q")
    sums = query_gradient_sums(model, modules, make_batches(queries, 30, 0), [0, 1, 0, 1], 2, per_token=False)
    directions = {n: f.precondition(split_functions(sums[n], [2, 2]), f.damping("auto")) for n, f in factors.items()}
    instance = score_batches(model, modules, batches, directions, len(train), per_token=False)
    tokens = token_scores(model, modules, batches, directions, len(train))
    for i, z in enumerate(train):
        assert tokens[i].shape == (3, z.n_loss_tokens)  # response tokens only, per query function
        # two routes through LlamaRMSNorm's float32 internals: agreement to ~1e-6 relative
        torch.testing.assert_close(tokens[i].sum(dim=1), instance[i], rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("d", [17, 255, 256, 577])
def test_blocked_gram_is_the_full_product(d):
    """Covariance sums add x^T x's upper-triangle blocks in place over batches; once mirrored the
    sum is the full product's and exactly symmetric. The blocks cover the upper triangle once."""
    from curate.influence.factors import add_gram, gram_blocks, gram_layout, mirror_gram

    gen = torch.Generator().manual_seed(d)
    xs = [torch.randn(n, d, dtype=torch.float64, generator=gen) for n in (300, 7)]
    g = torch.zeros(d, d, dtype=torch.float64)
    for x in xs:
        add_gram(g, gram_blocks(x))
    mirror_gram(g)
    torch.testing.assert_close(g, sum(x.T @ x for x in xs), rtol=1e-12, atol=1e-10)
    assert torch.equal(g, g.T)
    covered = torch.zeros(d, d, dtype=torch.int64)
    for r0, r1, c0, c1 in gram_layout(d):
        covered[r0:r1, c0:c1] += 1
    assert torch.equal(covered.triu(), torch.ones(d, d, dtype=torch.int64).triu())  # each entry once
    assert d < 256 or covered.sum() <= 0.65 * d * d  # the lower triangle mostly not multiplied
