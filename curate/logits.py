"""A causal LM's logits at chosen positions only: the output head applied where they are read.

A causal LM maps every position's hidden state to vocabulary logits, [B, T, V], while a loss or a
log-likelihood reads only some positions (a response's tokens; never the prompt or the padding).
On a small model with a large vocabulary (a 2-layer Llama with SmolLM2's 49k tokens) the head and
its softmax are most of the work, and even on SmolLM2-135M they are a fifth of a forward, so
applying the head at the N positions read, [N, V], gives the same numbers for less. Anything the
model does to its logits after the head (soft-capping, scaling) is elementwise and still applies.
The head is never a tracked module of the influence engine (`capture.select_modules`), so its
inputs may change shape.

Where the model returns its head's output unchanged (`returns_head_output`), the head can go
further: `hidden_at` gives the hidden states it would read, `linear_cross_entropy` (the CPU
trainer's loss) and `head_logprobs` (the influence passes' log-probs) take the head and its
softmax together, with one in-place softmax (`softmax_in_place`) and no [N, V] temporaries, and
`head_target_logprobs` (an evaluation's log-probs, no gradient) the same way.
"""

from __future__ import annotations

import weakref

import torch


def logits_at(model, keep: torch.Tensor, *, head=None, **inputs) -> torch.Tensor:
    """`model(**inputs)`'s logits at the positions where `keep` ([B, T] bool) is True: [N, V],
    N = keep.sum(), rows in row-major order of `keep` (example by example, position by position).

    `head` is the model's output-embedding module (default `model.get_output_embeddings()`; pass
    it for a wrapped model). Raises ValueError when the model has none.
    """
    head = head if head is not None else model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings to restrict")

    def kept_only(module, args):  # hidden states [B, T, d] -> [1, N, d]
        return (args[0][keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(kept_only)
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    return logits.reshape(-1, logits.shape[-1])


def hidden_at(model, keep: torch.Tensor, *, head=None, **inputs) -> torch.Tensor:
    """The hidden states `model(**inputs)`'s head reads at the positions where `keep` ([B, T] bool)
    is True: [N, d], rows ordered as in `logits_at`. The head itself runs on no position; the
    hidden states stay in the autograd graph of the model's body."""
    head = head if head is not None else model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings to restrict")
    kept = []

    def capture(module, args):  # hidden states [B, T, d] -> kept [N, d]; the head gets [B, 0, d]
        kept.append(args[0][keep])
        return (args[0][:, :0], *args[1:])

    handle = head.register_forward_pre_hook(capture)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return kept[0]


_RETURNS_HEAD_OUTPUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def returns_head_output(model, head) -> bool:
    """Whether `model(...).logits` is `head`'s output itself, nothing applied after the head
    (Llama, Qwen2: yes; Gemma2's soft-cap, Granite's scaling: no), so that a loss may be taken from
    `hidden_at` and the head's weights directly. Found once per model, with a one-token forward."""
    if model not in _RETURNS_HEAD_OUTPUT:
        seen = []
        handle = head.register_forward_hook(lambda module, args, output: seen.append(output))
        try:
            with torch.no_grad():
                logits = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=head.weight.device),
                               use_cache=False).logits
        finally:
            handle.remove()
        _RETURNS_HEAD_OUTPUT[model] = len(seen) == 1 and logits is seen[0]
    return _RETURNS_HEAD_OUTPUT[model]


def fusable_head(model, head) -> bool:
    """Whether `head` can be applied from the hidden states by the functions here (`hidden_at`
    with `linear_cross_entropy`, `head_logprobs` or `head_target_logprobs`), which take its weight
    and bias directly: a plain `nn.Linear` whose output the model returns unchanged
    (`returns_head_output`)."""
    return type(head) is torch.nn.Linear and returns_head_output(model, head)


CHUNK_BYTES = 16 << 20  # one chunk's float32 logits (85 rows of a 49k vocabulary; 42-170 rows timed alike)
BLOCK_COLUMNS = 4096  # vocabulary columns per product into a chunk's logits (2,048-8,192 timed alike)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, *, chunk_rows: int | None = None) -> torch.Tensor:
    """Sum over rows of cross-entropy(hidden @ weight.T + bias, targets) in nats: a scalar.

    hidden [N, d], weight [V, d], bias [V] or None, targets [N] (token ids). The same number and
    gradients as `cross_entropy(linear(hidden, weight, bias), targets, reduction="sum")` with the
    logits promoted to at least float32 (bfloat16 weights are promoted, more exact than a
    bfloat16 head; the loss has that dtype), without ever holding the [N, V] logits: they are
    made `chunk_rows` rows at a time (default: CHUNK_BYTES of float32 logits) and reduced at once
    to the chunk's loss and its gradients for hidden, weight and bias (those that need one); the
    backward scales them by the incoming gradient. This is the fused linear cross-entropy of GPU
    kernels (Liger's, Apple's cut-cross-entropy), which need Triton; here in plain torch for the
    CPU trainer, where the [N, V] logits and their log-softmax cost more than the head's matrix
    products (a 2-layer model with a 49k-token head, 1,160 labelled tokens: 0.53 s -> 0.26-0.32 s
    for the head's forward and backward, 2 threads).
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows)


def head_target_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, *, chunk_rows: int | None = None) -> torch.Tensor:
    """log p(targets[n] | row n) under softmax(hidden @ weight.T + bias): [N] (nats, <= 0), in at
    least float32, with no gradient (an evaluation's log-likelihoods). Shapes as in
    `linear_cross_entropy`, and made the same way, a chunk of rows at a time, so the [N, V] logits
    and their log-softmax are never held (a 2-layer model with a 49k-token head, the 64 bundled
    GSM8K queries' log-likelihood, 2 threads: 1.65-2.06 s -> 0.78-0.95 s with the model's body)."""
    out = torch.empty(hidden.shape[0], dtype=torch.promote_types(weight.dtype, torch.float32), device=hidden.device)
    with torch.no_grad():
        for start, _, _, logp, _, _ in _chunk_softmaxes(hidden, weight, bias, targets, chunk_rows):
            out[start:start + logp.shape[0]] = logp[:, 0]
    return out


def _chunk_softmaxes(hidden, weight, bias, targets, chunk_rows):
    """For each chunk of `chunk_rows` rows (default: CHUNK_BYTES of float32 logits), in order:
    (start row, h [n, d], t [n], log p(t) [n, 1], e [n, V], norm [n, 1]) with softmax = e / norm
    (`softmax_in_place`), h and e in the compute dtype (the weight's promoted to at least
    float32). Every chunk's e is the same buffer, overwritten by the next: a fresh [rows, V] per
    chunk is mapped and faulted in page by page on a CPU (a 2-layer model's head: 0.056 -> 0.040
    s for 4 chunks, one thread)."""
    compute = torch.promote_types(weight.dtype, torch.float32)
    w, b = weight.to(compute), None if bias is None else bias.to(compute)
    rows = chunk_rows or max(1, CHUNK_BYTES // (4 * weight.shape[0]))
    buffer = torch.empty(min(rows, hidden.shape[0]), weight.shape[0], dtype=compute, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows].to(compute), targets[start:start + rows]
        logp, e, norm = softmax_in_place(head_product(h, w, b, buffer[:h.shape[0]]), t[:, None])
        yield start, h, t, logp, e, norm


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        compute = torch.promote_types(weight.dtype, torch.float32)
        w = weight.to(compute)
        total = torch.zeros((), dtype=compute, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(w) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=compute, device=hidden.device) if need_bias else None
        for start, h, t, logp, e, norm in _chunk_softmaxes(hidden, w, bias, targets, chunk_rows):
            total -= logp.sum()
            # d(loss)/d(logits) = softmax - one_hot = (e - norm * one_hot) / norm: the division is
            # left to the [rows, d] products
            e.scatter_add_(1, t[:, None], -norm)
            if need_hidden:
                grad_hidden[start:start + h.shape[0]] = (e @ w).div_(norm)
            if need_weight:
                grad_weight.addmm_(e.T, h / norm)
            if need_bias:
                grad_bias += (e / norm).sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        return *(None if g is None else (g * grad.to(g.dtype)).to(dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True)), None, None


def head_product(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
                 ) -> torch.Tensor:
    """`out` [N, V] = hidden [N, d] @ weight [V, d].T (+ bias [V]), written BLOCK_COLUMNS
    vocabulary columns at a time, and returned. The same dot products as one product (to
    rounding: a narrow block may take another kernel); into a reused buffer it is faster on a CPU,
    each [N, BLOCK_COLUMNS] block being finished while it is still in cache (a 1,160-row loss's
    85-row chunks of 49,152 logits at d = 64, 2 threads: 89-91 ms -> 62-68 ms; no gain into
    freshly allocated memory, where the page faults dominate)."""
    for start in range(0, weight.shape[0], BLOCK_COLUMNS):
        block = slice(start, start + BLOCK_COLUMNS)
        if bias is None:
            torch.mm(hidden, weight[block].T, out=out[:, block])
        else:
            torch.addmm(bias[block], hidden, weight[block].T, out=out[:, block])
    return out


def softmax_in_place(logits: torch.Tensor, targets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The softmax of `logits` [N, V] with one exp, overwriting them, and the log-probabilities of
    `targets` [N, K] (K token ids per row). Returns (log p [N, K], e [N, V], norm [N, 1]) with
    e = exp(logits - max) in the logits' storage and softmax = e / norm: no [N, V] temporaries
    (on a CPU fresh pages of that size cost as much as the arithmetic)."""
    picked = logits.gather(1, targets)
    top = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(top).exp_()
    norm = e.sum(dim=1, keepdim=True)
    return picked - (top + norm.log()), e, norm


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
                  ) -> torch.Tensor:
    """log p(targets[k, n] | position n) for K label sets at once: [K, N] (nats, <= 0).

    hidden [N, d] (differentiable), weight [V, d] (the head's, frozen: no gradient reaches it),
    logits [N, V] = hidden @ weight.T (+ bias) without a graph, overwritten here, targets [K, N].
    One softmax serves every label set: with P = softmax(logits) @ weight [N, d] made once in the
    forward, d log p(t | n) / d hidden[n] = weight[t] - P[n], so a backward from any label set
    costs [N, d], not the head's [N, V] log-softmax backward and product (the influence passes'
    two backwards, sampled and data labels, share it). The same numbers as a log-softmax of
    those logits, to rounding.
    """
    return _HeadLogprobs.apply(hidden, weight, logits, targets)


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, logits, targets):
        if ctx.needs_input_grad[1]:
            raise ValueError("head_logprobs: the head's weight must be frozen (no gradient reaches it)")
        logp, e, norm = softmax_in_place(logits, targets.T)
        expected = (e @ weight).div_(norm)  # E_p[weight row], [N, d]
        ctx.save_for_backward(weight, targets, expected)
        return logp.T

    @staticmethod
    def backward(ctx, grad):  # grad [K, N]
        weight, targets, expected = ctx.saved_tensors
        grad = grad.to(expected.dtype)
        grad_hidden = -grad.sum(dim=0)[:, None] * expected
        for g, t in zip(grad, targets, strict=True):
            grad_hidden.addcmul_(g[:, None], weight[t])
        return grad_hidden, None, None, None
