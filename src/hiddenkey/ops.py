"""Pure tensor functions: masks and drops of the unified framework. No Hugging Face imports.

Every mask is a boolean *keep* mask drawn from torch's default generator, so gradient checkpointing
(which saves and restores that generator) recomputes the same mask, and two passes of one batch draw
different masks.

Shapes by pattern:

======================  ===================  =====================  ======================
position                element              column                 span
======================  ===================  =====================  ======================
logits / weights        (B, H, Lq, Lk)       (B, H, 1, Lk)          (B, H, 1, Lk)
hidden / input / output (B, L, D)            (B, 1, D)              (B, L, 1)
======================  ===================  =====================  ======================

Column masks are shared by all queries of a head (one draw per sample, head and key). Span masks
split the axis into blocks of ``max(1, round(span_ratio * L))`` positions on a grid with a random
offset and drop each block with probability ``p``, so every position is dropped with probability
exactly ``p`` and dropped positions come in contiguous runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def span_length(length: int, span_ratio: float) -> int:
    return max(1, round(span_ratio * length))


def element_keep_mask(shape: tuple[int, ...], rate: float, device: torch.device | None = None) -> torch.Tensor:
    return torch.rand(shape, device=device) >= rate


def span_keep_mask(
    prefix: tuple[int, ...], length: int, rate: float, span: int, device: torch.device | None = None
) -> torch.Tensor:
    """Keep mask of shape ``(*prefix, length)`` whose dropped positions form blocks of ``span``."""
    offset = torch.randint(0, span, (*prefix, 1), device=device)
    num_blocks = (length + span - 1) // span + 1
    block_keep = torch.rand((*prefix, num_blocks), device=device) >= rate
    block_index = (torch.arange(length, device=device) + offset) // span
    return torch.gather(block_keep, -1, block_index)


def attention_keep_mask(
    pattern: str,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    rate: float,
    span_ratio: float = 0.1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Keep mask over attention entries; broadcastable to ``(B, H, Lq, Lk)``."""
    if pattern == "element":
        return element_keep_mask((batch, heads, q_len, k_len), rate, device)
    if pattern == "column":
        return element_keep_mask((batch, heads, 1, k_len), rate, device)
    if pattern == "span":
        return span_keep_mask((batch, heads, 1), k_len, rate, span_length(k_len, span_ratio), device)
    raise ValueError(f"unknown pattern {pattern!r}")


def first_visible_keys(mask: torch.Tensor | None, k_len: int, count: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(B|1, 1|H, 1, Lk)``: the first ``count`` keys of each sequence that some query may see.

    ``mask`` is the structural attention mask (boolean: True = visible; float: 0 = visible, ``finfo.min``
    = blocked) or None (every key visible). Padding keys are seen by no query, so with left padding the
    protected keys are the first real tokens; causal and sliding-window masks leave key 0 protected.
    """
    if mask is None:
        return (torch.arange(k_len, device=device) < count).view(1, 1, 1, k_len)
    mask = mask[..., :k_len]
    seen = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    visible = seen.any(dim=-2, keepdim=True)
    return visible & (visible.cumsum(dim=-1) <= count)


def protect_first_keys(keep: torch.Tensor, mask: torch.Tensor | None, count: int) -> torch.Tensor:
    """Keep the first ``count`` visible keys (attention sinks) whatever ``keep`` drew; ``count=0`` is a no-op.

    The mask is drawn first and then overridden, so protecting keys never shifts the random stream.
    """
    if count <= 0:
        return keep
    return keep | first_visible_keys(mask, keep.shape[-1], count, keep.device)


def hidden_keep_mask(
    pattern: str, shape: tuple[int, int, int], rate: float, span_ratio: float = 0.1, device: torch.device | None = None
) -> torch.Tensor:
    """Keep mask over hidden states ``(B, L, D)``; broadcastable to that shape."""
    batch, length, dim = shape
    if pattern == "element":
        return element_keep_mask(shape, rate, device)
    if pattern == "column":
        return element_keep_mask((batch, 1, dim), rate, device)
    if pattern == "span":
        return span_keep_mask((batch,), length, rate, span_length(length, span_ratio), device).unsqueeze(-1)
    raise ValueError(f"unknown pattern {pattern!r}")


def drop_hidden_and_keep(
    x: torch.Tensor, rate: float, pattern: str = "element", span_ratio: float = 0.1, rescale_structured: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`drop_hidden` that also returns its boolean keep mask (broadcastable to ``x``).

    Element drops go through ``torch.native_dropout``, which draws the same mask as ``F.dropout`` from
    the same generator state and returns it; on CPU ``F.dropout`` keeps its mask to itself.
    """
    if rate <= 0.0:
        return x, torch.ones((), dtype=torch.bool, device=x.device)
    if pattern == "element":
        return torch.native_dropout(x, rate, True)
    squeeze = x.dim() == 2
    h = x.unsqueeze(1) if squeeze else x
    if h.dim() != 3:
        raise ValueError(f"{pattern} drops need (B, L, D) hidden states, got shape {tuple(x.shape)}")
    keep = hidden_keep_mask(pattern, tuple(h.shape), rate, span_ratio, h.device)
    scale = 1.0 / (1.0 - rate) if rescale_structured else 1.0
    out = h * (keep.to(h.dtype) * scale)
    return (out.squeeze(1) if squeeze else out), keep


def drop_hidden(
    x: torch.Tensor, rate: float, pattern: str = "element", span_ratio: float = 0.1, rescale_structured: bool = False
) -> torch.Tensor:
    """Drop hidden states ``(B, L, D)`` (or ``(B, D)``).

    Element drops are vanilla dropout with 1/(1-p) scaling (HiddenCut-element, Sec. 2.3 of the paper).
    Column and span drops zero without rescaling, as the original HiddenCut and Cutoff do, unless
    ``rescale_structured``.
    """
    if rate > 0.0 and pattern == "element":
        return F.dropout(x, rate, training=True)  # on CPU cheaper than native_dropout, mask unneeded
    return drop_hidden_and_keep(x, rate, pattern, span_ratio, rescale_structured)[0]


def dropkey_bias(keep: torch.Tensor, dtype: torch.dtype, offset: float) -> torch.Tensor:
    """Additive logit bias: 0 where kept, ``-offset`` where dropped (Eq. 3 with a finite offset).

    The offset is capped at the dtype's largest finite value, so a large ``offset`` (above 65504 in
    float16) can never become ``-inf`` and turn a fully dropped row into NaN.
    """
    return (~keep).to(dtype) * -min(float(offset), torch.finfo(dtype).max)


def apply_structure(bias: torch.Tensor, mask: torch.Tensor | None, causal: bool, q_len: int, k_len: int) -> torch.Tensor:
    """Merge a drop bias with the structural attention mask into one additive float mask.

    Structural blocks (padding, future keys) get ``finfo.min`` by selection rather than by addition, so they never overflow to ``-inf`` in half precision, and always dominate the finite
    drop offset: a causal model never attends to the future, and a row whose visible keys are all
    dropped reduces (softmax is shift-invariant) to the undropped row.
    """
    min_value = torch.finfo(bias.dtype).min
    if mask is None:
        if not causal or q_len == 1:
            return bias
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=bias.device).triu(k_len - q_len + 1)
        return torch.where(future, min_value, bias)
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, min_value)
    return (bias + mask.to(bias.dtype)).clamp_min(min_value)


def compact_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """Reduce a bidirectional mask whose query rows are all equal to shape ``(B, 1, 1, Lk)``.

    HF materialises padding masks as ``(B, 1, Lq, Lk)``; merged with a per-head drop bias that would
    give an ``(B, H, Lq, Lk)`` tensor per layer, kept for backward. The rows of a padding-only mask are
    identical, so one row carries all of it. Masks with distinct rows are returned unchanged.
    """
    if mask.dim() != 4 or mask.shape[-2] == 1:
        return mask
    first = mask[:, :, :1, :]
    return first if torch.equal(mask, first.expand_as(mask)) else mask


# --------------------------------------------------------------------------------------------------
# Reference implementations on explicit weights (Eq. 1-3). Used by the eager path and by the tests.
# --------------------------------------------------------------------------------------------------
def dropkey_softmax(logits: torch.Tensor, keep: torch.Tensor, offset: float | None = None) -> torch.Tensor:
    """DropKey (Eq. 3): dropped logits get ``-inf`` (or ``-offset``), then the softmax renormalises."""
    if offset is None:
        dropped = logits.masked_fill(~keep, float("-inf"))
    else:
        dropped = logits + dropkey_bias(keep, logits.dtype, offset)
    return torch.softmax(dropped, dim=-1)


def dropattention_softmax(logits: torch.Tensor, keep: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """DropAttention with normalized rescaling (Eq. 1-2): w' = m*w / NoGrad(sum m*w).

    A row whose weights are all dropped stays all zero (its normaliser is replaced by 1).
    """
    weights = torch.softmax(logits, dim=-1)
    kept = weights * keep.to(weights.dtype)
    return normalise_kept(kept, kept.sum(dim=-1, keepdim=True), stop_gradient)


class _NormaliseKept(torch.autograd.Function):
    """``x / norm`` whose backward divides by ``max(norm, eps)``.

    The forward is plain division (``norm == 0`` -> 1, so an all-dropped row stays zero). In exact
    arithmetic the gradient is bounded (``x <= norm``), but ``g / norm`` overflows to inf when a row
    keeps only a denormal sliver of its attention mass (sharp attention whose top keys are dropped),
    and inf times a zero weight is NaN. Clamping the divisor in the backward only keeps every row
    with ``norm >= eps`` bit-identical and bounds the amplification of the others by ``1/eps``.
    A detached ``norm`` (the stop-gradient of Eq. 2) gets no gradient and the output is not saved.
    """

    @staticmethod
    def forward(ctx, x, norm):
        out = x / torch.where(norm > 0, norm, torch.ones_like(norm))
        ctx.save_for_backward(out if ctx.needs_input_grad[1] else None, norm)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, norm = ctx.saved_tensors
        divisor = norm.clamp_min(torch.finfo(norm.dtype).eps)
        grad_norm = -(grad * out).sum(dim=-1, keepdim=True) / divisor if ctx.needs_input_grad[1] else None
        return grad / divisor, grad_norm


def normalise_kept(kept: torch.Tensor, norm: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """DropAttention's normalised rescaling ``kept / norm`` (Eq. 2), NaN-free in the backward."""
    if stop_gradient:
        norm = norm.detach()
    return _NormaliseKept.apply(kept, norm)
