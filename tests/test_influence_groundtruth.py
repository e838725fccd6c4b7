"""EK-FAC scores against exact Gauss-Newton scores, and the copies-of-queries sanity check."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from curate.influence.batches import make_batches
from curate.influence.capture import select_modules
from curate.influence.factors import ModuleFactors, eigenbases, fit_covariances, fit_lambdas
from curate.influence.scoring import query_gradient_sums, score_batches, split_functions
from curate.influence.tokens import Tokenized
from tests.tiny import autograd_example_grads, random_examples, tiny_llama

VOCAB = 16


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = x.argsort().argsort().double()
    ry = y.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def _ekfac_scores(model, modules, train, queries, sample_seed):
    batches = make_batches(train, 64, pad_id=0)
    covs = fit_covariances(model, modules, batches, sample_seed=sample_seed)
    bases = {n: eigenbases(c) for n, c in covs.items()}
    lams = fit_lambdas(model, modules, batches, bases, sample_seed=sample_seed)
    factors = {n: ModuleFactors(*bases[n], lams[n][0] / lams[n][1]) for n in modules}
    sums = query_gradient_sums(model, modules, make_batches(queries, 64, 0), [0] * len(queries), 1, per_token=False)
    directions = {n: f.precondition(split_functions(sums[n], [len(queries)]), f.damping("auto")) for n, f in factors.items()}
    return score_batches(model, modules, batches, directions, len(train), per_token=False)[:, 0], factors


def _flat_grads(model, modules, item):
    g = autograd_example_grads(model, modules, item)
    return torch.cat([g[n].flatten() for n in modules])


def _exact_gauss_newton(model, modules, train):
    """(1/N) sum_n sum_{t in loss} J_t^T (diag p_t - p_t p_t^T) J_t over the tracked weights."""
    names = [f"{n}.weight" for n in modules]
    params = {k: v.detach() for k, v in model.named_parameters()}
    total = sum(params[k].numel() for k in names)
    gn = torch.zeros(total, total, dtype=torch.float64)
    for z in train:
        ids = torch.tensor([z.input_ids])

        def logits_of(tracked, ids=ids):
            return functional_call(model, {**params, **tracked}, (ids,)).logits[0, :-1]

        jac = jacrev(logits_of)({k: params[k] for k in names})  # name -> [T-1, V, *shape]
        j = torch.cat([jac[k].flatten(2) for k in names], dim=2)[z.loss_start - 1 :]  # [L, V, P]
        probs = torch.softmax(logits_of({k: params[k] for k in names}), -1)[z.loss_start - 1 :]
        for t in range(j.shape[0]):
            p = probs[t]
            m = torch.diag(p) - torch.outer(p, p)
            gn += j[t].T @ m @ j[t]
    return gn / len(train)


def _pattern_examples(n: int, seed: int, prefix: str = "ex", length: int = 16) -> list[Tokenized]:
    """Sequences counting up by a step k mod VOCAB, half with one corrupted token: learnable
    structure, so the curvature is not that of noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        start = int(torch.randint(0, VOCAB, (1,), generator=g))
        ids = [(start + k * j) % VOCAB for j in range(length)]
        if torch.rand(1, generator=g) < 0.5:
            ids[int(torch.randint(3, length, (1,), generator=g))] = int(torch.randint(0, VOCAB, (1,), generator=g))
        out.append(Tokenized(f"{prefix}{i}", tuple(ids), 3, False, length))
    return out


@pytest.mark.parametrize("seed,train_steps", [(0, 0), (1, 0), (0, 100)])
def test_ekfac_tracks_exact_gauss_newton_better_than_identity(seed, train_steps):
    """Spearman correlation of EK-FAC (true Fisher, default settings) and of identity curvature
    (plain gradient dot products) with scores under the exact damped Gauss-Newton matrix of the
    tracked weights. Measured (seed, steps -> EK-FAC / identity): (0, 0) 0.92 / 0.76,
    (1, 0) 0.88 / 0.81, (0, 100) 0.71 / 0.47. In data-poor settings (24 examples, 2 layers) both
    fall near 0 and neither wins: the exact inverse is then dominated by its damped null space."""
    model = tiny_llama(vocab=VOCAB, hidden=8, inter=12, layers=1, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.div_(3.0)  # undo tiny_llama's sharpening: this test wants a trainable model
    if train_steps:
        ids = torch.tensor([z.input_ids for z in _pattern_examples(64, 99)])
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(train_steps):
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    modules = select_modules(model, "mlp")
    train = _pattern_examples(80, 7 + seed)
    queries = _pattern_examples(8, 50 + seed, "q")
    ekfac, _ = _ekfac_scores(model, modules, train, queries, sample_seed=4)

    gn = _exact_gauss_newton(model, modules, train)
    damping = 0.1 * float(torch.diagonal(gn).mean())
    qgrad = sum(_flat_grads(model, modules, q) for q in queries) / len(queries)
    direction = torch.linalg.solve(gn + damping * torch.eye(gn.shape[0], dtype=torch.float64), qgrad)
    train_grads = torch.stack([_flat_grads(model, modules, z) for z in train])
    exact = train_grads @ direction
    identity = train_grads @ qgrad

    rho_ekfac = _spearman(ekfac, exact)
    rho_identity = _spearman(identity, exact)
    print(f"seed {seed}, {train_steps} steps: Spearman vs exact GN: EK-FAC {rho_ekfac:.3f}, identity {rho_identity:.3f}")
    assert rho_ekfac > rho_identity
    assert rho_ekfac > 0.6


def test_copies_of_queries_rank_in_top_quarter():
    model = tiny_llama(vocab=VOCAB, hidden=12, inter=20, layers=2, seed=5)
    modules = select_modules(model, "mlp")
    queries = random_examples(8, vocab=VOCAB, seed=21, prefix="q", min_len=10, max_len=16)
    others = random_examples(40, vocab=VOCAB, seed=22, min_len=10, max_len=16)
    copies = [type(q)(f"copy-{q.id}", q.input_ids, q.loss_start, False, q.full_length) for q in queries[:4]]
    train = others + copies
    scores, _ = _ekfac_scores(model, modules, train, queries, sample_seed=4)
    ranks = (-scores).argsort().argsort()  # 0 = most helpful
    copy_ranks = sorted(int(ranks[len(others) + i]) for i in range(len(copies)))
    print(f"ranks of the {len(copies)} copies among {len(train)}: {copy_ranks}")
    assert max(copy_ranks) < len(train) / 4
