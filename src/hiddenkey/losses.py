"""Consistency losses between stochastic passes (Eq. 11-12), computed in float32.

Reduction: each divergence is summed over the distribution's support (classes, or vocabulary) and
averaged over rows (samples, or unmasked target tokens): the per-sample ``batchmean`` of
``F.kl_div``, so a weight means the same at every batch size and sequence length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rows(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = logits.float().reshape(-1, logits.shape[-1])
    if mask is None:
        return flat
    return flat[mask.reshape(-1).bool()]


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of KL(P || Q), with P = softmax(p_logits), Q = softmax(q_logits)."""
    log_p = F.log_softmax(_rows(p_logits, mask), dim=-1)
    log_q = F.log_softmax(_rows(q_logits, mask), dim=-1)
    if log_p.shape[0] == 0:
        return p_logits.new_zeros((), dtype=torch.float32) + 0.0 * p_logits.float().sum()
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional KL of R-Drop (Eq. 11): ½ (KL(P||Q) + KL(Q||P))."""
    return 0.5 * (kl_divergence(p_logits, q_logits, mask) + kl_divergence(q_logits, p_logits, mask))


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Jensen-Shannon divergence ½ KL(P||M) + ½ KL(Q||M), M = (P+Q)/2 (HiddenCut's code)."""
    log_p = F.log_softmax(_rows(p_logits, mask), dim=-1)
    log_q = F.log_softmax(_rows(q_logits, mask), dim=-1)
    if log_p.shape[0] == 0:
        return p_logits.new_zeros((), dtype=torch.float32) + 0.0 * p_logits.float().sum()
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * (
        F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
        + F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
    )


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
