"""Readouts say which rows are explained with typed fields: indices, all content rows, or the
layout's per-example row weights (``per_example_rows``)."""

import pytest
import torch

from gae_utils.layout import Readout, Segment, TokenLayout


def test_a_string_for_rows_is_refused_with_the_typed_field_named():
    with pytest.raises(TypeError, match=r"got rows='weights'.*per_example_rows=True"):
        Readout("text", "text", "text", "weights")  # type: ignore[arg-type]


def test_per_example_rows_without_weights_names_the_fix():
    layout = TokenLayout((Segment("text", 3),), (Readout("text", "text", "text", per_example_rows=True),))
    with pytest.raises(ValueError, match=r"has none; pass TokenLayout\(\.\.\., weights=\{'text'"):
        layout.read({("text", "text"): torch.eye(3)[None]})


def test_per_example_rows_read_each_examples_own_row_and_indices_read_a_shared_row():
    full = torch.arange(2 * 9.0).reshape(2, 3, 3)  # (B, N, N)
    maps = {("text", "text"): full}
    rows = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # (B, N): row 1, then row 2
    weighted = TokenLayout(
        (Segment("text", 3),), (Readout("text", "text", "text", per_example_rows=True),), {"text": rows}
    )
    assert torch.equal(weighted.read(maps)["text"], torch.stack([full[0, 1], full[1, 2]]))
    shared = TokenLayout((Segment("text", 3),), (Readout("text", "text", "text", rows=(0,)),))
    assert torch.equal(shared.read(maps)["text"], full[:, 0])


def test_layout_round_trips_and_reads_files_saved_with_rows_weights():
    readouts = (Readout("text", "text", "text", per_example_rows=True), Readout("b", "text", "text", rows=(0, 1)))
    layout = TokenLayout((Segment("text", 3, grid=None),), readouts)
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    assert layout.readouts[0].rows is None  # per-example rows keep no indices
    old = {"segments": layout.to_dict()["segments"],
           "readouts": [{"name": "text", "rows_of": "text", "columns_of": "text", "rows": "weights",
                         "drop_self": False, "subtract_identity": False}]}  # fmt: skip
    assert TokenLayout.from_dict(old).readouts == (Readout("text", "text", "text", None, per_example_rows=True),)
