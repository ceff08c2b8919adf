"""The paper's equations: DropKey vs DropAttention forward equivalence (Eq. 5-6, 13), their gradients
(Eq. 7-9), the compensation factor k (Eq. 10, 14-15), and the registered attention function against
explicit-weight references."""

import pytest
import torch
from torch import nn

from hiddenkey import ops
from hiddenkey.attention import AttentionPlan, dropped_attention
from hiddenkey.config import DropSpec


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _row(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


LOGITS = [0.3, -1.2, 2.0, 0.7, -0.4]
KEEP = torch.tensor([True, True, False, True, True])  # key m = 2 is dropped
U, M = 0, 2


def test_forward_equivalence_eq5_eq6_eq13():
    g = _row(LOGITS)
    dropkey = ops.dropkey_softmax(g, KEEP)
    for stop_gradient in (True, False):
        dropattention = ops.dropattention_softmax(g, KEEP, stop_gradient)
        torch.testing.assert_close(dropkey, dropattention)
    e = torch.exp(g.detach())
    expected_u = e[U] / (e.sum() - e[M])  # Eq. 13: exp(g_u) / sum_{i != m} exp(g_i)
    torch.testing.assert_close(dropkey[U], expected_u)
    assert dropkey[M] == 0


def test_inverted_dropout_scaling_is_not_equivalent():
    g = _row(LOGITS)
    w = torch.softmax(g, -1) * KEEP / (1 - 0.2)
    assert not torch.allclose(w, ops.dropkey_softmax(g, KEEP))


def _grad(weights_fn, index):
    g = _row(LOGITS)
    weights_fn(g)[index].backward()
    return g.grad


def test_dropkey_gradients_eq7():
    grad = _grad(lambda g: ops.dropkey_softmax(g, KEEP), U)
    w_u = ops.dropkey_softmax(torch.tensor(LOGITS), KEEP)[U]
    assert grad[M] == 0  # the dropped logit receives nothing
    torch.testing.assert_close(grad[U], w_u * (1 - w_u))
    e = torch.exp(torch.tensor(LOGITS))
    s_m = e.sum() - e[M]
    torch.testing.assert_close(grad[U], e[U] * (s_m - e[U]) / s_m**2)


def test_dropattention_nograd_gradients_eq8_eq9():
    grad = _grad(lambda g: ops.dropattention_softmax(g, KEEP, stop_gradient=True), U)
    e = torch.exp(torch.tensor(LOGITS))
    total, s_m = e.sum(), e.sum() - e[M]
    eq8 = -e[U] * e[M] / (total * s_m)
    eq9 = e[U] * (total - e[U]) / (total * s_m)
    assert grad[M] != 0  # gradient noise: the dropped logit still gets a gradient
    torch.testing.assert_close(grad[M], eq8)
    torch.testing.assert_close(grad[U], eq9)


def test_dropattention_without_nograd_has_dropkey_gradients():
    for index in range(len(LOGITS)):
        a = _grad(lambda g: ops.dropkey_softmax(g, KEEP), index)
        b = _grad(lambda g: ops.dropattention_softmax(g, KEEP, stop_gradient=False), index)
        torch.testing.assert_close(a, b)


def _k(logits):
    def grad_u(fn):
        g = _row(logits)
        fn(g)[U].backward()
        return g.grad[U]

    return grad_u(lambda g: ops.dropkey_softmax(g, KEEP)) / grad_u(
        lambda g: ops.dropattention_softmax(g, KEEP, stop_gradient=True)
    )


def test_compensation_factor_k_eq10_eq14_eq15():
    e = torch.exp(torch.tensor(LOGITS))
    k = _k(LOGITS)
    eq14 = (1 - e[U] / (e.sum() - e[M])) / (1 - e[U] / e.sum())
    torch.testing.assert_close(k, eq14)
    w = torch.softmax(torch.tensor(LOGITS), -1)
    torch.testing.assert_close(k, 1 - w[M] * w[U] / ((1 - w[M]) * (1 - w[U])))
    assert k < 1
    ks = []
    for g_m in (-2.0, 0.0, 2.0, 4.0):
        logits = list(LOGITS)
        logits[M] = g_m
        ks.append(_k(logits).item())
    assert all(a > b for a, b in zip(ks, ks[1:])), ks  # k decreases as the dropped logit grows


# ---------------------------------------------------------------------------------------------
# The registered attention function against the explicit-weight references
# ---------------------------------------------------------------------------------------------
class _Module(nn.Module):
    def __init__(self, causal):
        super().__init__()
        self.is_causal = causal


class _State:
    active = True


def _plan(logits=None, weights=None, stop_gradient=True):
    def spec(position, pattern):
        return None if pattern is None else DropSpec(position, 0.4, pattern, 0.25, stop_gradient)

    return AttentionPlan(spec("logits", logits), spec("weights", weights), _State(), 1e4, True)


def _qkv(seed=0, b=2, h=2, lq=6, lk=6, d=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, requires_grad=True) for n in (lq, lk, lk)]


def _structure(causal, lq, lk, padding):
    if causal:
        return torch.ones(lq, lk, dtype=torch.bool).tril()
    mask = torch.ones(2, 1, lq, lk, dtype=torch.bool)
    if padding:
        mask[0, ..., -2:] = False
    return mask


def _reference(q, k, v, keep, allowed, weights_fn):
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(~allowed, float("-inf"))
    return (weights_fn(logits, keep) @ v).transpose(1, 2)


def _draw(pattern, q, k, seed):
    torch.manual_seed(seed)
    b, h, lq, _ = q.shape
    return ops.attention_keep_mask(pattern, b, h, lq, k.shape[2], 0.4, 0.25)


def _run(plan, q, k, v, mask, causal, seed):
    torch.manual_seed(seed)
    out, _ = dropped_attention(_Module(causal), plan, q, k, v, mask, 0.0, None)
    return out


def _nonempty_rows(keep, allowed):
    return (keep & allowed).any(-1)  # (B, H, Lq): rows with at least one visible, kept key


@pytest.mark.parametrize("pattern", ["element", "column", "span"])
@pytest.mark.parametrize("causal,padding", [(False, False), (False, True), (True, False)])
def test_attention_function_matches_references_and_equivalence(pattern, causal, padding):
    seed = 7
    q, k, v = _qkv()
    lq, lk = q.shape[2], k.shape[2]
    allowed = _structure(causal, lq, lk, padding)
    mask = None if causal or not padding else allowed
    if not causal and not padding:
        mask = None
    keep = _draw(pattern, q, k, seed)
    rows = _nonempty_rows(keep, allowed).transpose(1, 2)  # (B, Lq, H)

    dropkey = _run(_plan(logits=pattern), q, k, v, mask, causal, seed)
    ref_dk = _reference(q, k, v, keep, allowed, lambda g, m: ops.dropkey_softmax(g, m))
    torch.testing.assert_close(dropkey[rows], ref_dk[rows])

    grads = {}
    for stop_gradient in (True, False):
        out = _run(_plan(weights=pattern, stop_gradient=stop_gradient), q, k, v, mask, causal, seed)
        ref = _reference(q, k, v, keep, allowed, lambda g, m: ops.dropattention_softmax(g, m, stop_gradient))
        torch.testing.assert_close(out[rows], ref[rows])
        torch.testing.assert_close(out[rows], dropkey[rows])  # same forward for the same mask
        upstream = torch.randn_like(out) * rows.unsqueeze(-1)
        grads[stop_gradient] = torch.autograd.grad((out * upstream).sum(), (q, k, v))
        ref_grads = torch.autograd.grad((ref * upstream).sum(), (q, k, v))
        for got, want in zip(grads[stop_gradient], ref_grads):
            torch.testing.assert_close(got, want)
    torch.manual_seed(0)
    upstream = torch.randn_like(dropkey) * rows.unsqueeze(-1)
    dk_grads = torch.autograd.grad((dropkey * upstream).sum(), (q, k, v))
    for stop_gradient in (True, False):
        out = _run(_plan(weights=pattern, stop_gradient=stop_gradient), q, k, v, mask, causal, seed)
        g = torch.autograd.grad((out * upstream).sum(), (q, k, v))
        same = all(torch.allclose(a, b) for a, b in zip(g, dk_grads))
        assert same != stop_gradient  # NoGrad changes the backward; without it DropAttention == DropKey


def test_fully_dropped_rows_fall_back_without_nan():
    q, k, v = _qkv(lq=5, lk=5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        qd, kd, vd = (t.detach().to(dtype) for t in (q, k, v))
        plan = AttentionPlan(DropSpec("logits", 0.999999, "column"), None, _State(), 1e4, True)
        for causal in (False, True):
            out, _ = dropped_attention(_Module(causal), plan, qd, kd, vd, None, 0.0, None)
            assert torch.isfinite(out).all(), (dtype, causal)
            plain = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=causal).transpose(1, 2)
            torch.testing.assert_close(out.float(), plain.float(), atol=2e-2, rtol=2e-2)
        plan_w = AttentionPlan(None, DropSpec("weights", 0.999999, "column"), _State(), 1e4, True)
        out, _ = dropped_attention(_Module(True), plan_w, qd, kd, vd, None, 0.0, None)
        assert torch.isfinite(out).all()
