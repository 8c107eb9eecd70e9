"""The one evaluation protocol: batches -> record -> relevance per row -> score.

Every evaluator of this package (the ShapesWorld evaluators of :mod:`.evaluators` and the harness
of :mod:`.harness`) runs the same loop:

1. make a batch (scenes, questions, stories, images of a shard);
2. **record** it once (one forward, one backward for its K targets: :func:`gae_utils.record`);
3. read the **relevance of every row** from the batch and its recording;
4. **score** each row's relevance against the batch's ground truth.

A *row* (:class:`Row`) is one line of a results table: a library method read from the shared
recording, ``random`` (uniform maps drawn from a seeded generator: the floor), a peer or any user
callable. All are the same kind of object; they differ only in what their cost is charged
(:attr:`Row.cost`). A row that cannot run here says so by raising
:class:`~gae_workbook.evaluation.peers.PeerUnavailableError` on its first call
(:func:`keep_available`), and is left out with a warning.

Costs are measured as the README's tables measure them (:func:`cost_clock`): process CPU time on
the CPU (with the intra-op thread count reported beside it), wall time after a synchronise on CUDA.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .peers import PeerUnavailableError

__all__ = [
    "Row",
    "Explained",
    "chunks",
    "cost_clock",
    "cost_note",
    "explain_batch",
    "explain_batches",
    "keep_available",
    "method_rows",
    "score_rows",
    "warm_up",
]

Cost = Literal["recording", "own", "none"]


@dataclass(frozen=True)
class Row:
    """One row of a results table.

    Attributes:
        relevance: ``(recording, batch) -> relevance`` of this row for one batch, in the form the
            evaluator's scoring reads (a tensor, or a tuple of tensors).
        cost: what the row is charged per batch: ``"recording"`` (the batch's shared recording plus
            its own computation: the library's methods), ``"own"`` (its own computation: peers, user
            callables), ``"none"`` (nothing).
    """

    relevance: Callable[[Any, Any], Any]
    cost: Cost = "own"


def method_rows(methods: Sequence[str], read: Callable[[Any, Any, str], Any]) -> dict[str, Row]:
    """The library's methods as rows read from the shared recording: ``read(recording, batch, method)``."""
    return {m: Row(lambda rec, batch, m=m: read(rec, batch, m), cost="recording") for m in methods}


def cost_clock(device: torch.device | str = "cpu") -> Callable[[], float]:
    """Seconds for costs: process CPU time on the CPU, wall time after a synchronise on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return time.process_time

    def wall() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return wall


def cost_note(device: torch.device | str = "cpu") -> str:
    """How :func:`cost_clock` measures on ``device``, with the thread count: printed beside every cost."""
    if torch.device(device).type == "cuda":
        return "wall time on CUDA"
    threads = torch.get_num_threads()
    return f"process CPU time, {threads} thread{'s' if threads > 1 else ''}"


def chunks(n: int, batch_size: int, progress: bool = True) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of each batch of ``n`` examples, ``batch_size`` at most, under an "explain" bar."""
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, batch_size), desc="explain", disable=not progress):
        yield start, min(batch_size, n - start)


def explain_batch(
    batch: Any,
    record: Callable[[Any], Any],
    rows: Mapping[str, Row],
    clock: Callable[[], float] = time.process_time,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Record ``batch`` once and read every row's relevance from it.

    Returns:
        ``({row: relevance}, {row: seconds})``, seconds charged as :attr:`Row.cost` says.
    """
    began = clock()
    rec = record(batch)
    recorded = clock() - began
    relevance, seconds = {}, {}
    for name, row in rows.items():
        began = clock()
        relevance[name] = row.relevance(rec, batch)
        own = clock() - began
        seconds[name] = {"recording": recorded + own, "own": own, "none": 0.0}[row.cost]
    return relevance, seconds


@dataclass
class Explained:
    """Every batch an evaluator explained, with each row's relevance and cost.

    Attributes:
        batches: the batches, in order.
        relevance: ``{row: [relevance of each batch]}``.
        seconds: ``{row: seconds over all batches}``.
    """

    batches: list = field(default_factory=list)
    relevance: dict[str, list] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def explain_batches(
    batches: Iterable[Any],
    record: Callable[[Any], Any],
    rows: Mapping[str, Row],
    clock: Callable[[], float] = time.process_time,
) -> Explained:
    """:func:`explain_batch` over ``batches``, keeping every batch and every row's relevance."""
    out = Explained(relevance={name: [] for name in rows}, seconds=dict.fromkeys(rows, 0.0))
    for batch in batches:
        relevance, seconds = explain_batch(batch, record, rows, clock)
        out.batches.append(batch)
        for name in rows:
            out.relevance[name].append(relevance[name])
            out.seconds[name] += seconds[name]
    return out


def score_rows(
    rows: Iterable[str], score: Callable[[str], tuple[dict[str, float], Any]], progress: bool = True
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """``score(row) -> (metrics, curves or None)`` for every row, under a "score" bar.

    Returns:
        ``({row: metrics}, {row: curves})`` (rows without curves left out of the second).
    """
    from tqdm.auto import tqdm

    results, curves = {}, {}
    for name in tqdm(list(rows), desc="score", disable=not progress):
        results[name], curve = score(name)
        if curve is not None:
            curves[name] = curve
    return results, curves


def keep_available(candidates: Mapping[str, Any], trial: Callable[[Any], object]) -> dict[str, Any]:
    """The candidates whose ``trial(candidate)`` does not raise :class:`PeerUnavailableError`.

    Each one left out is named in a warning saying why; any other error is a bug and propagates.
    """
    kept = {}
    for name, candidate in candidates.items():
        try:
            trial(candidate)
        except PeerUnavailableError as error:
            warnings.warn(f"peer {name!r} left out: {error}", stacklevel=3)
            continue
        kept[name] = candidate
    return kept


def warm_up(batch: Any, record: Callable[[Any], Any], rows: Mapping[str, Row]) -> dict[str, Row]:
    """Record ``batch`` and call each of ``rows`` once, untimed (imports and first calls stay out of the costs).

    Returns:
        The rows that can run here (:func:`keep_available`).
    """
    rec = record(batch)
    return keep_available(rows, lambda row: row.relevance(rec, batch))
