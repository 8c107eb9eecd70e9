"""The evaluation skeleton on toy rows: costs charged as each row declares, unavailable rows left out by type."""

import pytest
import torch

from gae_workbook.evaluation.peers import PeerUnavailableError
from gae_workbook.evaluation.protocol import (
    Row,
    explain_batch,
    explain_batches,
    keep_available,
    method_rows,
    score_rows,
    warm_up,
)


def _ticks():
    """A clock that advances one second per reading."""
    now = iter(range(1000))
    return lambda: float(next(now))


def test_costs_follow_each_rows_declaration():
    rows = {
        **method_rows(["a"], lambda rec, batch, m: (rec, batch, m)),
        "peer": Row(lambda rec, batch: batch * 2),
        "random": Row(lambda rec, batch: 0, cost="none"),
    }
    relevance, seconds = explain_batch(3, lambda batch: f"rec{batch}", rows, clock=_ticks())
    assert relevance == {"a": ("rec3", 3, "a"), "peer": 6, "random": 0}
    assert seconds == {"a": 2.0, "peer": 1.0, "random": 0.0}  # recording (1 s) + own (1 s); own; nothing


def test_batches_are_kept_in_order_and_rows_scored():
    rows = {"double": Row(lambda rec, batch: batch * 2), "same": Row(lambda rec, batch: rec)}
    done = explain_batches([1, 2, 3], lambda batch: batch, rows)
    assert done.batches == [1, 2, 3] and done.relevance == {"double": [2, 4, 6], "same": [1, 2, 3]}
    results, curves = score_rows(rows, lambda name: ({"sum": sum(done.relevance[name])}, None), progress=False)
    assert results == {"double": {"sum": 12}, "same": {"sum": 6}} and curves == {}


def test_only_an_unavailable_peer_is_left_out():
    def unavailable(rec, batch):
        raise PeerUnavailableError("library missing")

    rows = {"ok": Row(lambda rec, batch: torch.ones(1)), "missing": Row(unavailable)}
    with pytest.warns(UserWarning, match="'missing' left out: library missing"):
        assert list(warm_up(0, lambda batch: None, rows)) == ["ok"]

    def bug(_):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        keep_available({"buggy": None}, bug)
