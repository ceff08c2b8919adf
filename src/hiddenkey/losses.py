"""Consistency losses between stochastic passes (Eq. 11-12), computed in float32.

Reduction: each divergence is summed over the distribution's support (classes, or vocabulary) and
averaged over rows (samples, or unmasked target tokens): the per-sample ``batchmean`` of
``F.kl_div``, so a weight means the same at every batch size and sequence length.

Vocabulary-sized inputs (a causal LM: tokens x vocab) are reduced in chunks of rows by
:class:`ChunkedDivergence`: the float32 log-softmaxes and every other tokens x vocab temporary exist one
chunk at a time, and only the gradient of the logits (which any implementation hands back) has the
inputs' full size. Small inputs (classification, or fewer rows than one chunk) take the direct path
with ``F.kl_div``; both give the same value and gradients (tested).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: Logits per chunk when ``chunk_rows`` is 0 (auto): cache-sized on CPU, few kernel launches on a GPU.
AUTO_CHUNK_ELEMENTS = {"cpu": 2**18, "other": 2**24}


def _rows(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = logits.float().reshape(-1, logits.shape[-1])
    if mask is None:
        return flat
    return flat[mask.reshape(-1).bool()]


def _empty(p_logits: torch.Tensor) -> torch.Tensor:
    return p_logits.new_zeros((), dtype=torch.float32) + 0.0 * p_logits.float().sum()


# ------------------------------------------------------------------------------------------------ direct
def _direct_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    log_p = F.log_softmax(_rows(p_logits, mask), dim=-1)
    log_q = F.log_softmax(_rows(q_logits, mask), dim=-1)
    if log_p.shape[0] == 0:
        return _empty(p_logits)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def _direct_symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return 0.5 * (_direct_kl(p_logits, q_logits, mask) + _direct_kl(q_logits, p_logits, mask))


def _direct_js(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    log_p = F.log_softmax(_rows(p_logits, mask), dim=-1)
    log_q = F.log_softmax(_rows(q_logits, mask), dim=-1)
    if log_p.shape[0] == 0:
        return _empty(p_logits)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * (
        F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
        + F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
    )


# ------------------------------------------------------------------------------------------------ chunked
# A chunk kernel takes float32 logit rows p, q and returns (sum over the rows of the divergence, its
# gradient w.r.t. p, its gradient w.r.t. q), each gradient in closed form and None when not needed.
Kernel = Callable[[torch.Tensor, torch.Tensor, bool, bool], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def _log_softmax_and_softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax, softmax)`` of float32 rows with one exponential per entry."""
    shifted = logits - logits.amax(-1, keepdim=True)
    prob = shifted.exp()
    total = prob.sum(-1, keepdim=True)
    return shifted.sub_(total.log()), prob.div_(total)


def _softmax_vjp(prob: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. logits of ``sum(upstream * log_softmax(logits))``: ``P * (u - sum(P * u))``."""
    weighted = prob * upstream
    return weighted.addcmul_(prob, weighted.sum(-1, keepdim=True), value=-1.0)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.vdot(a.reshape(-1), b.reshape(-1))


# The kernels reuse their temporaries in place: each chunk is small, but there are many of them.
def _kl_kernel(p, q, need_p, need_q):
    # KL(P||Q) = sum P d with d = log P - log Q; d/dz_p = P (d - sum P d), d/dz_q = Q - P.
    (log_p, prob_p), (log_q, prob_q) = _log_softmax_and_softmax(p), _log_softmax_and_softmax(q)
    d = log_p.sub_(log_q)
    value = _dot(prob_p, d)
    grad_p = _softmax_vjp(prob_p, d) if need_p else None
    grad_q = prob_q.sub_(prob_p) if need_q else None
    return value, grad_p, grad_q


def _symmetric_kl_kernel(p, q, need_p, need_q):
    # 1/2 [KL(P||Q) + KL(Q||P)] = 1/2 sum (P - Q) d; d/dz_p = 1/2 [P (d - sum P d) + P - Q], q alike.
    (log_p, prob_p), (log_q, prob_q) = _log_softmax_and_softmax(p), _log_softmax_and_softmax(q)
    d = log_p.sub_(log_q)
    diff = prob_p - prob_q
    value = 0.5 * _dot(diff, d)
    grad_p = _softmax_vjp(prob_p, d).add_(diff).mul_(0.5) if need_p else None
    grad_q = _softmax_vjp(prob_q, d.neg_()).sub_(diff).mul_(0.5) if need_q else None
    return value, grad_p, grad_q


def _js_kernel(p, q, need_p, need_q):
    # 1/2 KL(P||M) + 1/2 KL(Q||M), M = (P+Q)/2; d/d log P = 1/2 log(P/M) (the M terms cancel), Q alike.
    (log_p, prob_p), (log_q, prob_q) = _log_softmax_and_softmax(p), _log_softmax_and_softmax(q)
    log_m = torch.logaddexp(log_p, log_q).sub_(math.log(2.0))
    half_p, half_q = log_p.sub_(log_m).mul_(0.5), log_q.sub_(log_m).mul_(0.5)
    value = _dot(prob_p, half_p) + _dot(prob_q, half_q)
    grad_p = _softmax_vjp(prob_p, half_p) if need_p else None
    grad_q = _softmax_vjp(prob_q, half_q) if need_q else None
    return value, grad_p, grad_q


class ChunkedDivergence(torch.autograd.Function):
    """Mean over selected rows of a divergence between ``softmax(p)`` and ``softmax(q)``, by chunks.

    ``p_logits``, ``q_logits``: ``(..., V)`` logits of any float dtype; ``rows``: indices of the rows of
    their ``(-1, V)`` view to average over. One sweep over the chunks computes the value and, for the
    inputs that need it, the gradient in closed form (float32, cast back to the input dtype) into a
    buffer of the input's shape; backward scales that buffer in place and hands it over. Besides those
    buffers no temporary is larger than one chunk. Backward runs once (no ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, p_logits, q_logits, rows: torch.Tensor, kernel: Kernel, chunk_rows: int):
        vocab = p_logits.shape[-1]
        p, q = p_logits.reshape(-1, vocab), q_logits.reshape(-1, vocab)
        grads = [
            torch.zeros(x.shape, dtype=x.dtype, device=x.device) if needed else None
            for x, needed in zip((p_logits, q_logits), ctx.needs_input_grad[:2])
        ]
        grad_p, grad_q = (None if g is None else g.view(-1, vocab) for g in grads)
        scale = 1.0 / rows.numel()
        total = torch.zeros((), dtype=torch.float32, device=p.device)
        for index in rows.split(chunk_rows):
            value, gp, gq = kernel(
                p.index_select(0, index).float(), q.index_select(0, index).float(), grad_p is not None, grad_q is not None
            )
            total += value
            if gp is not None:
                grad_p.index_copy_(0, index, gp.mul_(scale).to(p.dtype))
            if gq is not None:
                grad_q.index_copy_(0, index, gq.mul_(scale).to(q.dtype))
        ctx.grads = grads
        return total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("hiddenkey's chunked consistency loss supports one backward pass (no retain_graph)")
        grads, ctx.grads = ctx.grads, None
        # Scaled in place and handed over with no other reference left, so autograd can add the task
        # loss's gradient into this buffer instead of allocating another tokens x vocab tensor.
        grad_p, grad_q = (None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads)
        return grad_p, grad_q, None, None, None


def auto_chunk_rows(vocab: int, device: torch.device) -> int:
    budget = AUTO_CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "other"]
    return max(1, budget // max(1, vocab))


def _mean_over_rows(
    kernel: Kernel,
    direct: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    mask: torch.Tensor | None,
    chunk_rows: int,
) -> torch.Tensor:
    vocab = p_logits.shape[-1]
    chunk = chunk_rows or auto_chunk_rows(vocab, p_logits.device)
    if mask is None:
        rows = torch.arange(p_logits.numel() // vocab, device=p_logits.device)
    else:
        rows = mask.reshape(-1).to(device=p_logits.device, dtype=torch.bool).nonzero().squeeze(1)
    if rows.numel() <= chunk:
        return direct(p_logits, q_logits, mask)
    return ChunkedDivergence.apply(p_logits, q_logits, rows, kernel, chunk)


# ------------------------------------------------------------------------------------------------ public
def kl_divergence(
    p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None, chunk_rows: int = 0
) -> torch.Tensor:
    """Mean over rows of KL(P || Q), with P = softmax(p_logits), Q = softmax(q_logits).

    ``mask`` selects rows (e.g. target tokens); ``chunk_rows`` rows are reduced at a time when there are
    more (0: about :data:`AUTO_CHUNK_ELEMENTS` logits per chunk).
    """
    return _mean_over_rows(_kl_kernel, _direct_kl, p_logits, q_logits, mask, chunk_rows)


def symmetric_kl(
    p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None, chunk_rows: int = 0
) -> torch.Tensor:
    """Bidirectional KL of R-Drop (Eq. 11): ½ (KL(P||Q) + KL(Q||P))."""
    return _mean_over_rows(_symmetric_kl_kernel, _direct_symmetric_kl, p_logits, q_logits, mask, chunk_rows)


def js_divergence(
    p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None, chunk_rows: int = 0
) -> torch.Tensor:
    """Jensen-Shannon divergence ½ KL(P||M) + ½ KL(Q||M), M = (P+Q)/2 (HiddenCut's code)."""
    return _mean_over_rows(_js_kernel, _direct_js, p_logits, q_logits, mask, chunk_rows)


def regression_mse(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Consistency of two regression predictions (fairseq R-Drop's choice for regression)."""
    return F.mse_loss(p.float().reshape(-1), q.float().reshape(-1))


def lm_token_mask(labels: torch.Tensor | None, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Rows of causal-LM logits that predict a real target: position t predicts label t+1 != -100."""
    if labels is not None:
        mask = torch.zeros_like(labels, dtype=torch.bool)
        mask[:, :-1] = labels[:, 1:] != -100
        return mask[:, :length]
    if attention_mask is not None:
        return attention_mask.bool()[:, :length]
    return None
