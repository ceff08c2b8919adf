"""Mask statistics and shapes of the pure functional core."""

import math

import pytest
import torch

from hiddenkey import ops

RATES = [0.05, 0.1, 0.3]


def _tolerance(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("pattern", ["element", "column", "span"])
@pytest.mark.parametrize("rate", RATES)
def test_attention_mask_dropped_fraction_matches_rate(pattern, rate):
    torch.manual_seed(0)
    keep = ops.attention_keep_mask(pattern, 64, 8, 16, 50, rate, span_ratio=0.1)
    dropped = 1 - keep.float().mean().item()
    independent_units = keep.numel() if pattern != "span" else keep.numel() / ops.span_length(50, 0.1)
    assert abs(dropped - rate) < _tolerance(rate, independent_units)


@pytest.mark.parametrize("pattern", ["element", "column", "span"])
@pytest.mark.parametrize("rate", RATES)
def test_hidden_mask_dropped_fraction_matches_rate(pattern, rate):
    torch.manual_seed(0)
    keep = ops.hidden_keep_mask(pattern, (256, 40, 32), rate, span_ratio=0.1)
    dropped = 1 - keep.float().mean().item()
    units = {"element": keep.numel(), "column": keep.numel(), "span": keep.numel() / 4}[pattern]
    assert abs(dropped - rate) < _tolerance(rate, units)


def test_mask_shapes_per_pattern():
    assert ops.attention_keep_mask("element", 2, 3, 5, 7, 0.1).shape == (2, 3, 5, 7)
    assert ops.attention_keep_mask("column", 2, 3, 5, 7, 0.1).shape == (2, 3, 1, 7)
    assert ops.attention_keep_mask("span", 2, 3, 5, 7, 0.1).shape == (2, 3, 1, 7)
    assert ops.hidden_keep_mask("element", (2, 5, 4), 0.1).shape == (2, 5, 4)
    assert ops.hidden_keep_mask("column", (2, 5, 4), 0.1).shape == (2, 1, 4)
    assert ops.hidden_keep_mask("span", (2, 5, 4), 0.1).shape == (2, 5, 1)


def test_column_mask_is_shared_by_all_queries_of_a_head():
    torch.manual_seed(0)
    keep = ops.attention_keep_mask("column", 4, 2, 6, 10, 0.5)
    expanded = keep.expand(4, 2, 6, 10)
    assert torch.equal(expanded, expanded[:, :, :1, :].expand_as(expanded))
    # ... yet differs across heads and samples
    assert not torch.equal(keep[:, 0], keep[:, 1])
    assert not torch.equal(keep[0], keep[1])


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of maximal runs of dropped positions."""
    runs, start = [], None
    for i, kept in enumerate(row.tolist() + [True]):
        if not kept and start is None:
            start = i
        if kept and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_span_masks_are_contiguous_blocks_of_the_span_length():
    torch.manual_seed(0)
    length, ratio = 60, 0.1
    span = ops.span_length(length, ratio)
    keep = ops.span_keep_mask((500,), length, 0.2, span)
    interior_runs = 0
    for row in keep:
        for start, run in _runs(row):
            if start > 0 and start + run < length:
                assert run % span == 0, (start, run)
                interior_runs += 1
    assert interior_runs > 100


def test_masks_are_redrawn_on_every_call():
    a = ops.attention_keep_mask("column", 4, 4, 1, 32, 0.3)
    b = ops.attention_keep_mask("column", 4, 4, 1, 32, 0.3)
    assert not torch.equal(a, b)


def test_rate_zero_keeps_everything():
    for pattern in ("element", "column", "span"):
        assert ops.attention_keep_mask(pattern, 2, 2, 3, 5, 0.0).all()
        assert ops.hidden_keep_mask(pattern, (2, 3, 5), 0.0).all()
    x = torch.randn(2, 3, 5)
    assert ops.drop_hidden(x, 0.0) is x


def test_element_hidden_drop_rescales_and_structured_drop_does_not():
    torch.manual_seed(0)
    x = torch.ones(64, 32, 16)
    element = ops.drop_hidden(x, 0.25, "element")
    assert element.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    span = ops.drop_hidden(x, 0.25, "span", span_ratio=0.25)
    assert span.unique().tolist() == [0.0, 1.0]
    rescaled = ops.drop_hidden(x, 0.25, "column", rescale_structured=True)
    assert rescaled.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert abs(element.mean().item() - 1.0) < 0.02


def test_apply_structure_keeps_structure_and_never_overflows():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bias = ops.dropkey_bias(torch.tensor([[[[True, False, False]]]]), dtype, 1e4)
        merged = ops.apply_structure(bias, None, True, 3, 3)
        lo = torch.finfo(dtype).min
        assert merged.shape == (1, 1, 3, 3)
        assert torch.isfinite(merged).all()
        assert merged[0, 0, 0, 1] == lo and merged[0, 0, 0, 2] == lo and merged[0, 0, 1, 2] == lo
        assert merged[0, 0, 2, 1] == -1e4 if dtype == torch.float32 else merged[0, 0, 2, 1] < -9000
        additive = torch.tensor([[[[0.0, lo, 0.0]]]], dtype=dtype)
        assert torch.isfinite(ops.apply_structure(bias, additive, False, 1, 3)).all()


def test_compact_padding_mask_only_compacts_identical_rows():
    pad = torch.tensor([True, True, False])
    mask = pad.expand(2, 1, 3, 3).clone()
    assert ops.compact_padding_mask(mask).shape == (2, 1, 1, 3)
    mask[0, 0, 1, 0] = False
    assert ops.compact_padding_mask(mask).shape == (2, 1, 3, 3)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_dropattention_gradient_stays_finite_when_a_row_keeps_a_denormal_sliver(stop_gradient):
    """A sharp row whose top key is dropped keeps ~e^-100 of its mass: the forward renormalises exactly
    and the backward must not overflow (g / norm was inf, and inf * 0 gave NaN; seen in real runs)."""
    logits = torch.tensor([[[[100.0, 0.0, 0.0, 0.0]]]], requires_grad=True)
    keep = torch.tensor([[[[False, True, True, True]]]])
    weights = ops.dropattention_softmax(logits, keep, stop_gradient)
    torch.testing.assert_close(weights.detach(), torch.tensor([[[[0.0, 1 / 3, 1 / 3, 1 / 3]]]]))
    (weights * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_dropattention_normaliser_is_bit_identical_to_plain_division_in_the_normal_range():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(2, 3, 5, 5) > 0.3
    keep[0, 0, 0] = False  # one all-dropped row stays zero
    got = ops.dropattention_softmax(logits, keep)
    kept = torch.softmax(logits, -1) * keep
    norm = kept.sum(-1, keepdim=True).detach()
    want = kept / torch.where(norm > 0, norm, torch.ones_like(norm))
    assert torch.equal(got, want) and not got[0, 0, 0].any()
    g = torch.randn_like(got)
    (grad_got,) = torch.autograd.grad((got * g).sum(), logits)
    (grad_want,) = torch.autograd.grad((want * g).sum(), logits)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-12, atol=1e-12)
