"""Eq. 5-11 and the baselines on small cases computed by hand."""

import pytest
import torch

from gae_utils.layers import LayerRecord
from gae_utils.propagation import propagate
from gae_utils.rules import (
    cross_attention_update,
    gradcam_row,
    head_average,
    normalize_self_relevancy,
    rollout_step,
    self_attention_update,
)

T = torch.tensor


def test_head_average_eq5_by_hand():
    attn = T([[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.4, 0.6]]])  # (H=2, 2, 2)
    grad = T([[[2.0, -1.0], [1.0, 1.0]], [[-3.0, 5.0], [0.5, -2.0]]])
    # products: head0 [[1, -.5], [.2, .8]]; head1 [[-3, 0], [.2, -1.2]]; clamp; mean over heads
    expected = T([[0.5, 0.0], [0.2, 0.4]])
    torch.testing.assert_close(head_average(attn, grad), expected)


def test_head_average_shape_mismatch():
    with pytest.raises(ValueError, match="same"):
        head_average(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 2))


def test_self_attention_update_eq6_twice_by_hand():
    attn_bar = T([[0.5, 0.5], [0.0, 1.0]])
    r1 = self_attention_update(torch.eye(2), attn_bar)
    torch.testing.assert_close(r1, T([[1.5, 0.5], [0.0, 2.0]]))
    r2 = self_attention_update(r1, attn_bar)  # R + Abar @ R = r1 + [[.75, 1.25], [0, 2]]
    torch.testing.assert_close(r2, T([[2.25, 1.75], [0.0, 4.0]]))


def test_self_attention_update_eq7_other_modality():
    attn_bar = T([[0.5, 0.5], [0.0, 1.0]])
    r_sq = T([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # (2, 3)
    torch.testing.assert_close(self_attention_update(r_sq, attn_bar), r_sq + T([[0.5, 0.5, 1.0], [0.0, 1.0, 0.0]]))


def test_normalize_eq8_eq9_by_hand_and_zero_rows_stay_identity():
    r = T([[2.0, 1.0], [0.0, 1.0]])  # residual rows [1, 1] and [0, 0]
    torch.testing.assert_close(normalize_self_relevancy(r), T([[1.5, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(normalize_self_relevancy(torch.eye(3)), torch.eye(3))


def test_cross_attention_update_eq10_eq11_by_hand():
    r_ss = T([[2.0, 1.0], [0.0, 1.0]])  # Rbar_ss = [[1.5, .5], [0, 1]]
    r_qq = torch.eye(3)  # Rbar_qq = I
    r_sq = torch.zeros(2, 3)
    r_qs = T([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    attn_bar = T([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    delta_sq, delta_ss = cross_attention_update(r_sq, r_ss, r_qq, r_qs, attn_bar)
    # Rbar_ss^T @ Abar = [[1.5, 0], [.5, 1]] @ Abar
    torch.testing.assert_close(delta_sq, T([[1.5, 0.0, 0.0], [0.5, 0.5, 0.5]]))
    torch.testing.assert_close(delta_ss, T([[1.0, 0.0], [0.5, 1.0]]))


def test_cross_attention_update_is_batched():
    g = torch.Generator().manual_seed(0)
    args = [torch.rand(4, 2, *s, generator=g) for s in [(3, 5), (3, 3), (5, 5), (5, 3), (3, 5)]]
    batched = cross_attention_update(*args)
    for b in range(4):
        single = cross_attention_update(*[a[b, 1] for a in args])
        torch.testing.assert_close(batched[0][b, 1], single[0])
        torch.testing.assert_close(batched[1][b, 1], single[1])


def _layer(name, kind, query, key, cam, group=None):
    cam = cam[None, None]  # (B=1, K=1, Nq, Nk)
    return LayerRecord(name, kind, query, key, group, attn_mean=cam[:, 0], attn_bar=cam)


def test_co_attention_block_is_simultaneous():
    # text t (1 token), image i (2 tokens); a co-attention block t->i and i->t.
    t2i = _layer("t2i", "cross", "t", "i", T([[0.5, 0.5]]), group="block0")
    i2t = _layer("i2t", "cross", "i", "t", T([[1.0], [0.5]]), group="block0")
    maps = propagate([t2i, i2t])
    torch.testing.assert_close(maps[("t", "i")][0, 0], T([[0.5, 0.5]]))
    torch.testing.assert_close(maps[("i", "t")][0, 0], T([[1.0], [0.5]]))
    # R[i, i] += Abar_it @ R[t, i] *before* the block, which is 0: R[i, i] stays I.
    torch.testing.assert_close(maps[("i", "i")][0, 0], torch.eye(2))
    torch.testing.assert_close(maps[("t", "t")][0, 0], torch.eye(1))
    # Applied one after the other, the second layer would see R[t, i] already updated.
    sequential = propagate(
        [_layer("t2i", "cross", "t", "i", T([[0.5, 0.5]])), _layer("i2t", "cross", "i", "t", T([[1.0], [0.5]]))]
    )
    torch.testing.assert_close(sequential[("i", "i")][0, 0], torch.eye(2) + T([[0.5, 0.5], [0.25, 0.25]]))


def test_propagate_self_layers_and_start_layer():
    a1 = T([[0.5, 0.5], [0.0, 1.0]])
    a2 = T([[1.0, 0.0], [0.5, 0.5]])
    layers = [_layer("l0", "self", "x", "x", a1), _layer("l1", "self", "x", "x", a2)]
    r = torch.eye(2) + a1
    r = r + a2 @ r
    torch.testing.assert_close(propagate(layers)[("x", "x")][0, 0], r)
    torch.testing.assert_close(propagate(layers, start_layer=1)[("x", "x")][0, 0], torch.eye(2) + a2)
    with pytest.raises(ValueError, match="start_layer"):
        propagate(layers, start_layer=2)


def test_self_layer_updates_cross_maps_eq7():
    # After a cross layer fills R[t, i], a text self-attention layer carries it (Eq. 7).
    cross = _layer("t2i", "cross", "t", "i", T([[0.5, 0.5], [1.0, 0.0]]))
    self_t = _layer("t", "self", "t", "t", T([[0.0, 1.0], [0.0, 0.0]]))
    maps = propagate([cross, self_t])
    r_ti = T([[0.5, 0.5], [1.0, 0.0]])
    torch.testing.assert_close(maps[("t", "i")][0, 0], r_ti + T([[0.0, 1.0], [0.0, 0.0]]) @ r_ti)


def test_rollout_step_and_gradcam_row_by_hand():
    torch.testing.assert_close(rollout_step(T([[0.5, 0.5], [0.0, 1.0]])), T([[0.75, 0.25], [0.0, 1.0]]))
    torch.testing.assert_close(rollout_step(T([[0.0, 0.5], [0.0, 0.0]])), T([[0.5 / 0.75, 0.25 / 0.75], [0.0, 1.0]]))
    attn_row = T([[0.2, 0.8], [0.6, 0.4]])  # (H=2, N=2)
    grad_row = T([[1.0, 3.0], [-2.0, 0.0]])  # head weights 2 and -1
    torch.testing.assert_close(gradcam_row(attn_row, grad_row), T([0.0, 0.6]))


def test_rules_keep_dtype_float64():
    a = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    bar = head_average(a, torch.randn_like(a))
    assert bar.dtype == torch.float64
    assert self_attention_update(torch.eye(4, dtype=torch.float64).expand(2, 4, 4), bar).dtype == torch.float64


def test_window_update_without_residual_keeps_the_rows_dtype_and_passes_unwindowed_tokens():
    from gae_utils.rules import window_update_rows

    rows = torch.rand(2, 1, 5, dtype=torch.bfloat16)  # (B, M, N): token 0 is in no window
    maps = torch.rand(2, 2, 2, 2, dtype=torch.bfloat16)  # (B, nW, Nw, Nw)
    index = torch.tensor([[1, 2], [3, 4]])
    out = window_update_rows(rows, maps, index, residual=False)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[..., 0], rows[..., 0])
