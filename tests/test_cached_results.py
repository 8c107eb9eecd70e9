"""The notebooks' committed evaluation results: read back exactly, recomputed on request, never
overwritten by a smoke-size run."""

import torch

from gae_workbook.evaluate import cached_results


def test_round_trip_recompute_and_no_save(tmp_path):
    path = tmp_path / "results" / "r.json"
    calls = []

    def compute(value=1.0):
        calls.append(value)
        return {"gae": {"pointing": value}}, {"gae": torch.tensor([[0.5, 0.25], [1.0, 0.0]])}

    first = cached_results(path, compute)  # no file yet: computed and written
    assert path.exists() and len(calls) == 1
    results, curves = cached_results(path, lambda: compute(2.0))  # read back, not recomputed
    assert len(calls) == 1
    assert results == first[0]
    assert isinstance(curves["gae"], torch.Tensor) and torch.equal(curves["gae"], first[1]["gae"])
    again, _ = cached_results(path, lambda: compute(3.0), recompute=True, save=False)  # smoke-size run
    assert again["gae"]["pointing"] == 3.0
    assert cached_results(path, lambda: compute(4.0))[0]["gae"]["pointing"] == 1.0  # the file is unchanged
