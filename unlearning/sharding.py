"""Data-parallel evaluation: every rank scores a share of the batches, and every rank gets every result.

The scoring primitives (unlearning/scoring.py, and MIA's per-example gradients) split their work by
batch, not by example: the batches are made exactly as one process makes them (the same length-sorted
index batches, padded alike), batch i is computed by rank (i + c) % world, and the results are gathered
and put back in batch order. c counts the earlier calls, so that the spare batch of an uneven count (a
set smaller than one batch, ...) goes round the ranks instead of always to rank 0. Every number then comes from the same batch computation as in one process, and
each metric group's aggregation code runs unchanged on complete results, on every rank.

Splitting is on only inside `sharded()`, which the Evaluator enters with full model replicas on every
rank. Elsewhere (evaluation during training) a rank may hold a ZeRO-3 shard, whose forward passes gather
the parameters collectively: there every rank must run every batch.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from unlearning.strategies import distributed, global_rank

T = TypeVar("T")
R = TypeVar("R")

# Inside `sharded()`: the number of calls to split so far (None outside). A context variable because the
# primitives are called deep inside every metric group.
_CALLS: ContextVar[list[int] | None] = ContextVar("sharded_calls", default=None)


@contextmanager
def sharded() -> Iterator[None]:
    """Split the scoring primitives' batches over the processes while inside (a no-op in one process).
    Every rank must enter it and make the same calls in the same order: each gathers."""
    token = _CALLS.set(_CALLS.get() or [0])
    try:
        yield
    finally:
        _CALLS.reset(token)


def evaluation_ranks() -> tuple[int, int]:
    """(this rank, number of ranks) that evaluation work is split over: (0, 1) outside `sharded()`."""
    if _CALLS.get() is None or not distributed():
        return 0, 1
    return global_rank(), torch.distributed.get_world_size()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items rank `rank` of `world` computes: positions rank, rank + world, rank + 2 world, ..."""
    return list(items[rank::world])


def unshard(parts: Sequence[Sequence[R]], count: int) -> list[R]:
    """The `count` results in their original order, from each rank's results of its `shard`."""
    return [parts[i % len(parts)][i // len(parts)] for i in range(count)]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] in one process."""
    if not distributed():
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def map_sharded(compute: Callable[[T], R], batches: Sequence[T], progress_bar: tqdm | None = None) -> list[R]:
    """`compute(batch)` of every batch (or item: tokenizing, ROUGE), in order. Inside `sharded()` this
    rank computes its `shard` and the others' results are gathered (every rank calls it with the same
    batches)."""
    rank, world = evaluation_ranks()
    first = 0  # the rank computing batch 0
    if world > 1:
        calls = _CALLS.get()
        first, calls[0] = calls[0] % world, calls[0] + 1
    mine = []
    for batch in shard(batches, (rank - first) % world, world):
        mine.append(compute(batch))
        if progress_bar is not None:
            progress_bar.update()
    if world == 1:
        return mine
    gathered = all_gather_objects(mine)
    results = unshard([gathered[(slot + first) % world] for slot in range(world)], len(batches))
    if progress_bar is not None:
        progress_bar.update(len(batches) - len(mine))  # the other ranks' batches are done too
    return results
