"""Attention flow (Abnar & Zuidema 2020): hand-checked graphs, the two solvers, a ViT recording."""

import pytest
import torch
from conftest import tiny_timm_vit

from gae_utils import record
from gae_workbook.evaluation.flow import attention_flow, flow_grid, residual_attention

A = torch.tensor([[0.2, 0.8], [0.6, 0.4]])  # A~ = 0.5 A + 0.5 I = [[0.6, 0.4], [0.3, 0.7]]


def test_residual_attention_by_hand():
    torch.testing.assert_close(residual_attention(A), torch.tensor([[0.6, 0.4], [0.3, 0.7]]))
    rows = residual_attention(torch.rand(3, 5, 5)).sum(-1)
    torch.testing.assert_close(rows, torch.ones(3, 5))


@pytest.mark.parametrize("solver", ["scipy", "networkx"])
def test_flow_by_hand(solver):
    # one layer: the flow from the top CLS to input j is the edge capacity A~[0, j]
    one = attention_flow([A[None]], solver=solver)
    torch.testing.assert_close(one, torch.tensor([[0.6, 0.4]]), atol=1e-5, rtol=0)
    # two layers: to input 1 through (1, 0): min(0.6, 0.4); through (1, 1): min(0.4, 0.7) -> 0.8
    #             to input 0 through (1, 0): min(0.6, 0.6); through (1, 1): min(0.4, 0.3) -> 0.9
    two = attention_flow([A[None], A[None]], solver=solver)
    torch.testing.assert_close(two, torch.tensor([[0.9, 0.8]]), atol=1e-5, rtol=0)


def test_scipy_matches_networkx_on_random_graphs():
    attn = torch.rand(3, 2, 6, 6).softmax(-1)  # (L, B, N, N)
    fast = attention_flow(attn, source=0, solver="scipy")
    exact = attention_flow(attn, source=0, solver="networkx")
    assert fast.shape == (2, 6)
    torch.testing.assert_close(fast, exact, atol=1e-4, rtol=0)
    assert not torch.allclose(fast[0], fast[0, :1].expand(6), atol=1e-3)  # not a constant map


def test_flow_grid_from_a_vit_recording(images):
    model = tiny_timm_vit()
    rec = record(model, images)
    grid = flow_grid(rec.layers, (4, 4))
    assert grid.shape == (4, 4, 4) and (grid >= 0).all() and (grid <= 1 + 1e-5).all()
    with pytest.raises(ValueError, match="do not make"):
        flow_grid(rec.layers, (3, 3))
    with pytest.raises(ValueError, match="solver"):
        attention_flow([A[None]], solver="simplex")


def test_attention_flow_row_in_the_vit_evaluation():
    from gae_workbook import evaluate
    from gae_workbook.models import zoo

    results, _ = evaluate.evaluate_vit(zoo.load("shapes-vit"), n=4, seed=3, methods=["gae"], flow=True, progress=False)
    assert list(results) == ["gae", "attention_flow", "random"]
    assert 0 <= results["attention_flow"]["mass"] <= 1
    assert results["attention_flow"]["ms_per_pair"] > results["gae"]["ms_per_pair"]  # the recording plus max-flows
