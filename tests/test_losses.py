"""Consistency losses (Eq. 11-12) and the one-branch / both-branch training step."""

import math

import pytest
import torch

import hiddenkey
from hiddenkey import losses
from hiddenkey.trainer import consistency_term, duplicate_batch

from .conftest import batch, build_model, lora


def test_symmetric_kl_matches_hand_computation():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    value = losses.symmetric_kl(p.log().unsqueeze(0), q.log().unsqueeze(0))
    assert value.item() == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-6)
    assert losses.kl_divergence(p.log()[None], q.log()[None]).item() == pytest.approx(kl_pq, rel=1e-6)


def test_kl_is_a_per_row_mean_and_zero_for_equal_inputs():
    a = torch.randn(4, 5)
    assert losses.symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.randn(4, 5)
    doubled = losses.symmetric_kl(torch.cat([a, a]), torch.cat([b, b]))
    assert doubled.item() == pytest.approx(losses.symmetric_kl(a, b).item(), rel=1e-6)


def test_js_divergence_hand_value_and_bound():
    p, q = torch.tensor([1.0, 0.0]) + 1e-12, torch.tensor([0.0, 1.0]) + 1e-12
    js = losses.js_divergence(p.log()[None], q.log()[None])
    assert js.item() == pytest.approx(math.log(2), rel=1e-4)  # disjoint supports: log 2, the maximum
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    m = (p + q) / 2
    want = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert losses.js_divergence(p.log()[None], q.log()[None]).item() == pytest.approx(want.item(), rel=1e-6)


def test_lm_token_mask_shifts_and_ignores_padding():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    mask = losses.lm_token_mask(labels, None, 4)
    # position t predicts label t+1
    assert mask.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_token_level_kl_ignores_masked_positions():
    cfg = hiddenkey.DropoutConfig.preset("hiddenkey")
    logits1, logits2 = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    base = consistency_term(cfg, logits1, logits2, {"labels": labels}, causal_lm=True)
    changed = logits2.clone()
    changed[0, 2:] = torch.randn(2, 10) * 5  # positions that predict ignored labels
    changed[1, 0] = torch.randn(10) * 5
    changed[1, 3] = torch.randn(10) * 5
    assert consistency_term(cfg, logits1, changed, {"labels": labels}, causal_lm=True).item() == pytest.approx(
        base.item(), rel=1e-6
    )
    rows = torch.tensor([[True, True, False, False], [False, True, True, False]])
    assert base.item() == pytest.approx(losses.symmetric_kl(logits1[rows], logits2[rows]).item(), rel=1e-6)


def test_regression_consistency_is_mse():
    cfg = hiddenkey.DropoutConfig.preset("hiddenkey")
    a, b = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [1.0]])
    assert consistency_term(cfg, a, b, {}, causal_lm=False).item() == pytest.approx((0.25 + 1.0) / 2)


def test_duplicate_batch():
    inputs = {"input_ids": torch.arange(6).view(2, 3), "labels": torch.tensor([0, 1]), "flag": True}
    dup = duplicate_batch(inputs)
    assert dup["input_ids"].shape == (4, 3) and dup["labels"].tolist() == [0, 1, 0, 1] and dup["flag"] is True


def _setup(family="bert", labels="cls", **cfg):
    model = lora(build_model(family, dropout=0.0), family, init_lora_weights=False)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3, **cfg))
    model.train()
    return model, batch(labels=labels)


def test_one_branch_mode_runs_the_second_pass_without_graph():
    model, inputs = _setup()
    torch.manual_seed(0)
    loss, outputs, parts = hiddenkey.hiddenkey_loss(model, inputs)
    assert parts["consistency"] > 0
    assert loss.item() == pytest.approx(parts["task_loss"].item() + parts["consistency"].item(), rel=1e-5)
    # the reference pass is detached: the gradient equals the one from (task + w * KL(P1, sg(P2)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_both_branch_mode_duplicates_the_batch():
    model, inputs = _setup(backprop="both")
    calls = []
    handle = model.get_base_model().bert.embeddings.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    loss, outputs, parts = hiddenkey.hiddenkey_loss(model, inputs)
    handle.remove()
    assert calls == [2 * inputs["input_ids"].shape[0]]
    assert outputs.logits.shape[0] == 2 * inputs["input_ids"].shape[0]
    assert parts["consistency"] > 0


def test_kl_weight_scales_the_consistency_term():
    losses_by_weight = {}
    for weight in (0.0, 1.0, 3.0):
        model, inputs = _setup(kl_weight=weight)
        torch.manual_seed(5)
        loss, _, parts = hiddenkey.hiddenkey_loss(model, inputs)
        losses_by_weight[weight] = (loss.item(), parts)
    task = losses_by_weight[1.0][1]["task_loss"].item()
    kl = losses_by_weight[1.0][1]["consistency"].item()
    assert losses_by_weight[3.0][0] == pytest.approx(task + 3 * kl, rel=1e-5)
    assert "consistency" not in losses_by_weight[0.0][1]


def test_js_with_inference_reference_uses_the_undropped_pass():
    model, inputs = _setup(consistency="js", js_reference="inference")
    seen = []
    state = hiddenkey.get_state(model)
    handle = model.get_base_model().bert.register_forward_hook(lambda *a: seen.append(state.enabled))
    hiddenkey.hiddenkey_loss(model, inputs)
    handle.remove()
    assert seen == [True, False]
    assert state.enabled


def test_causal_lm_training_step():
    model, inputs = _setup("llama", labels="lm")
    loss, outputs, parts = hiddenkey.hiddenkey_loss(model, inputs)
    assert torch.isfinite(loss) and parts["consistency"] > 0
    loss.backward()


# ------------------------------------------------------------------------------------------------ chunked
def _reference(kind, p, q, mask):
    """The unchunked implementation as it was before chunking (F.kl_div on boolean-indexed rows)."""
    def rows(x):
        flat = x.float().reshape(-1, x.shape[-1])
        return flat if mask is None else flat[mask.reshape(-1)]

    log_p, log_q = torch.log_softmax(rows(p), -1), torch.log_softmax(rows(q), -1)
    kl = lambda a, b: torch.nn.functional.kl_div(b, a, reduction="batchmean", log_target=True)  # noqa: E731
    if kind == "kl":
        return kl(log_p, log_q)
    if kind == "symmetric_kl":
        return 0.5 * (kl(log_p, log_q) + kl(log_q, log_p))
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * (kl(log_p, log_m) + kl(log_q, log_m))


DIVERGENCES = {"kl": losses.kl_divergence, "symmetric_kl": losses.symmetric_kl, "js": losses.js_divergence}


def _value_and_grads(fn, p, q, both):
    p = p.detach().clone().requires_grad_()
    q = q.detach().clone().requires_grad_(both)
    value = fn(p, q)
    (3.0 * value).backward()  # a non-unit upstream gradient, as under a consistency weight
    return value.detach(), p.grad, q.grad


@pytest.mark.parametrize("kind", list(DIVERGENCES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("both", [False, True], ids=["one-branch", "both-branches"])
def test_chunked_divergence_matches_the_unchunked_value_and_gradients(kind, dtype, both):
    g = torch.Generator().manual_seed(0)
    p = (3 * torch.randn(3, 11, 50, generator=g)).to(dtype)
    q = (3 * torch.randn(3, 11, 50, generator=g)).to(dtype)
    mask = torch.rand(3, 11, generator=g) > 0.3
    mask[1] = False  # a sample without targets
    want = _value_and_grads(lambda a, b: _reference(kind, a, b, mask), p, q, both)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    for chunk_rows in (1, 3, 7):  # uneven last chunks; every size < the 17 selected rows, so all are chunked
        got = _value_and_grads(lambda a, b: DIVERGENCES[kind](a, b, mask, chunk_rows), p, q, both)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], **tol)
        assert got[1].dtype == dtype
        assert (got[2] is None) == (not both)
        if both:
            torch.testing.assert_close(got[2], want[2], **tol)
        assert got[1][1].abs().max() == 0  # rows outside the mask get no gradient


def test_chunked_divergence_without_mask_and_auto_chunk_agree():
    p, q = torch.randn(2, 5, 40), torch.randn(2, 5, 40)
    want = _value_and_grads(lambda a, b: _reference("symmetric_kl", a, b, None), p, q, True)
    for chunk_rows in (4, 0):  # 0: auto, one chunk here, so the direct path
        got = _value_and_grads(lambda a, b: losses.symmetric_kl(a, b, None, chunk_rows), p, q, True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


class _LargestNewTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the size of every tensor an op returns (what a forward allocates)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.data_ptr() not in {a.data_ptr() for a in args if isinstance(a, torch.Tensor)}:
                self.sizes.append(t.numel())
        return out


def test_chunked_kl_allocates_nothing_vocabulary_sized_but_the_gradient():
    tokens, vocab, chunk = 64, 500, 8
    p = torch.randn(2, tokens // 2, vocab, requires_grad=True)
    q = torch.randn(2, tokens // 2, vocab)
    with _LargestNewTensors() as chunked:
        losses.symmetric_kl(p, q, None, chunk)
    big = [n for n in chunked.sizes if n > chunk * vocab]
    assert big == [tokens * vocab]  # the gradient buffer of p, and nothing else
    with _LargestNewTensors() as direct:
        losses.symmetric_kl(p, q, None, tokens)  # one chunk: the direct path
    assert sum(n >= tokens * vocab for n in direct.sizes) >= 4  # float rows, log-softmaxes, kl terms
