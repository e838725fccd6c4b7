"""curate's EK-FAC scores against kronfluence's on the same tiny Llama, data and settings.

Matched: float64 everywhere, the MLP projections tracked, empirical Fisher (data labels), summed
response NLL with the prompt masked, padding excluded by the attention mask, and the relative
damping 0.1 x mean(Lambda*) per module. kronfluence's pairwise score of (q, z) is
grad log p(q)^T (EK-FAC + damping)^{-1} grad log p(z), so curate's score of z for the query set
(f = mean over the set of log p(q)) is the row mean of kronfluence's [n_query, n_train] matrix.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

kronfluence = pytest.importorskip("kronfluence")
# kronfluence 1.0.1 builds torch.cuda.amp.GradScaler, deprecated in recent torch.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402

from benchmarks.kronfluence_task import ResponseNLLTask, TokenDataset  # noqa: E402
from curate.influence.batches import make_batches  # noqa: E402
from curate.influence.capture import select_modules  # noqa: E402
from curate.influence.factors import ModuleFactors, eigenbases, fit_covariances, fit_lambdas  # noqa: E402
from curate.influence.passes import PairCache  # noqa: E402
from curate.influence.scoring import (  # noqa: E402
    query_gradient_sums,
    replay_scores,
    score_batches,
    split_functions,
)
from tests.tiny import random_examples, tiny_llama  # noqa: E402

VOCAB = 64
F64 = torch.float64


@pytest.fixture(autouse=True)
def no_memory_release_between_phases(monkeypatch):
    """kronfluence frees memory between its phases with gc.collect() (for GPUs), 16 times here, each
    ~0.2 s in a test process holding torch and transformers; no number depends on it."""
    import sys

    from kronfluence.utils.state import release_memory

    for name, module in list(sys.modules.items()):
        if name.startswith("kronfluence") and getattr(module, "release_memory", None) is release_memory:
            monkeypatch.setattr(module, "release_memory", lambda: None)


def _curate(model, train, queries, sample_seed):
    """Lambda* per module and the query-set scores [n_train] from curate's low-level API, as the
    engine runs it: one pass over the fit examples, whose kept pairs (with the true Fisher, a
    second backward's data-label pairs) give the eigenvalue correction and the scores."""
    modules = select_modules(model, "mlp")
    batches = make_batches(train, batch_tokens=64, pad_id=0)
    cache = PairCache(10**12)
    covs = fit_covariances(model, modules, batches, sample_seed=sample_seed, cache=cache, score_pairs=True)
    bases = {n: eigenbases(c) for n, c in covs.items()}
    lams = fit_lambdas(model, modules, batches, bases, sample_seed=sample_seed, cache=cache)
    factors = {n: ModuleFactors(bases[n][0], bases[n][1], lams[n][0] / lams[n][1]) for n in modules}
    q_batches = make_batches(queries, batch_tokens=64, pad_id=0)
    sums = query_gradient_sums(model, modules, q_batches, [0] * len(queries), 1, per_token=False)
    directions = {}
    for n, f in factors.items():
        directions[n] = f.precondition(split_functions(sums[n], [len(queries)]), f.damping("auto"))
    scores = replay_scores(cache, directions, len(train), per_token=False)[:, 0]
    torch.testing.assert_close(scores, score_batches(model, modules, batches, directions, len(train), per_token=False)[:, 0],
                               rtol=1e-12, atol=1e-12)
    return {n: f.lam for n, f in factors.items()}, scores, list(modules)


def _kronfluence(model, names, train, queries, out_dir, empirical):
    """kronfluence's Lambda (mean over examples) per module and pairwise scores [n_query, n_train]."""
    task = ResponseNLLTask(names)
    model = prepare_model(model, task)
    analyzer = Analyzer("kf", model, task, cpu=True, disable_tqdm=True, output_dir=str(out_dir),
                        log_level=logging.WARNING)
    factor_args = FactorArguments(
        strategy="ekfac", use_empirical_fisher=empirical,
        activation_covariance_dtype=F64, gradient_covariance_dtype=F64, eigendecomposition_dtype=F64,
        per_sample_gradient_dtype=F64, lambda_dtype=F64,
    )
    score_args = ScoreArguments(damping_factor=None,  # relative damping: 0.1 x mean(Lambda) per module
                                per_sample_gradient_dtype=F64, precondition_dtype=F64, score_dtype=F64)
    train_ds, query_ds = TokenDataset(train), TokenDataset(queries)
    analyzer.fit_all_factors("ekfac", train_ds, per_device_batch_size=4, factor_args=factor_args,
                             overwrite_output_dir=True)
    analyzer.compute_pairwise_scores("pairs", "ekfac", query_ds, train_ds, per_device_query_batch_size=4,
                                     per_device_train_batch_size=4, score_args=score_args,
                                     overwrite_output_dir=True)
    pairwise = analyzer.load_pairwise_scores("pairs")["all_modules"]
    # The benchmark's matched setting: query gradients summed before preconditioning, [1, n_train].
    score_args.aggregate_query_gradients = True
    analyzer.compute_pairwise_scores("summed", "ekfac", query_ds, train_ds, per_device_query_batch_size=4,
                                     per_device_train_batch_size=4, score_args=score_args,
                                     overwrite_output_dir=True)
    summed = analyzer.load_pairwise_scores("summed")["all_modules"]
    factors = analyzer.load_all_factors("ekfac")
    lams = {n: factors["lambda_matrix"][n] / factors["num_lambda_processed"][n] for n in names}
    return lams, pairwise, summed


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_scores_and_lambdas_match_kronfluence(tmp_path, fisher):
    """With the true Fisher kronfluence's task draws the labels with curate's seeded sampler
    (`benchmarks.kronfluence_task`), so both fit the same sampled Fisher: kronfluence in three
    model passes, curate in one forward with two backwards."""
    model = tiny_llama(vocab=VOCAB, hidden=16, inter=32, layers=2, seed=0, dtype=F64)
    # Eager attention takes its softmax in float32 whatever the model dtype, so a float64 model's
    # activations then depend on the padded width (SIMD reduction order) at ~1e-7: curate pads each
    # length-sorted batch to its longest item, the kronfluence dataset pads to the longest overall.
    # SDPA stays in float64, which lets the comparison below be tight.
    model.set_attn_implementation("sdpa")
    train = random_examples(40, vocab=VOCAB, min_len=8, max_len=24, seed=1)
    queries = random_examples(6, vocab=VOCAB, min_len=8, max_len=24, seed=2, prefix="q")

    kf_model = copy.deepcopy(model)  # prepare_model wraps modules in place
    ours_lam, ours, names = _curate(model, train, queries, 0 if fisher == "true" else None)
    kf_lam, pairwise, summed = _kronfluence(kf_model, names, train, queries, tmp_path, fisher == "empirical")
    assert pairwise.shape == (len(queries), len(train))
    theirs = pairwise.to(F64).mean(dim=0)

    pearson = float(torch.corrcoef(torch.stack([ours, theirs]))[0, 1])
    rel = float((ours - theirs).norm() / theirs.norm())
    print(f"\nPearson(curate, kronfluence mean over queries) = {pearson:.8f}; relative L2 difference = {rel:.2e}")
    assert pearson >= 0.999
    assert rel < 1e-10
    # kronfluence's query-aggregated mode gives the same scores (times the number of queries).
    torch.testing.assert_close(summed[0].to(F64) / len(queries), theirs, rtol=1e-10, atol=1e-12)

    # Lambda*: both are mean over examples of (Q_S^T G_n Q_A)^2 with G_n the gradient of the same
    # summed response NLL, so they agree with scale 1 (and the damping 0.1 x mean(Lambda*) with it).
    for n in names:
        scale = float((ours_lam[n] * kf_lam[n]).sum() / (kf_lam[n] ** 2).sum())
        lam_rel = float((ours_lam[n] - scale * kf_lam[n]).norm() / ours_lam[n].norm())
        print(f"Lambda* {n}: scale curate/kronfluence = {scale:.8f}, relative difference after scaling = {lam_rel:.2e}")
        assert lam_rel < 1e-10
        assert abs(scale - 1) < 1e-10
