"""Data-parallel evaluation: every rank scores a share of the batches, and every rank gets every result.

The scoring primitives (unlearning/scoring.py, and MIA's per-example gradients) split their work by
batch, not by example: the batches are made exactly as one process makes them (the same length-sorted
index batches, padded alike), each rank computes the batches it owns, and the results are gathered and
put back in batch order. Items of equal cost (records to tokenize, pairs to score with ROUGE) go round
robin: item i to rank (i + c) % world, c counting the earlier calls, so that the spare item of an uneven
count goes round the ranks instead of always to rank 0. Batches of unequal cost (a caller gives each
batch's padded size) are balanced: largest first, each to the least-loaded rank, as every call ends by
waiting for its slowest rank. Every number then comes from the same batch computation as in one process,
and each metric group's aggregation code runs unchanged on complete results, on every rank.

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


def owners(count: int, world: int, first: int = 0, costs: Sequence[float] | None = None) -> list[int]:
    """The rank that computes each of `count` batches. Without costs, round robin from rank `first`:
    batch i on rank (i + first) % world. With costs, largest first (ties in batch order), each to the
    least-loaded rank so far (ties: in rank order from `first`): the ranks finish a call together."""
    if costs is None:
        return [(i + first) % world for i in range(count)]
    loads = [0.0] * world
    ranks = [(first + k) % world for k in range(world)]
    owner = [0] * count
    for i in sorted(range(count), key=lambda i: -costs[i]):
        owner[i] = min(ranks, key=loads.__getitem__)
        loads[owner[i]] += costs[i]
    return owner


def in_batch_order(parts: Sequence[Sequence[R]], owner: Sequence[int]) -> list[R]:
    """The results in batch order, from each rank's results of the batches it owns (in its own order)."""
    taken = [iter(part) for part in parts]
    return [next(taken[rank]) for rank in owner]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] in one process."""
    if not distributed():
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def map_sharded(compute: Callable[[T], R], batches: Sequence[T], progress_bar: tqdm | None = None,
                costs: Sequence[float] | None = None) -> list[R]:
    """`compute(batch)` of every batch (or item: tokenizing, ROUGE), in order. Inside `sharded()` this
    rank computes the batches `owners` gives it (balanced by `costs` when given: e.g. padded tokens per batch)
    and the others' results are gathered (every rank calls it with the same batches and costs)."""
    rank, world = evaluation_ranks()
    first = 0  # where round robin starts, and which rank a tie in load goes to
    if world > 1:
        calls = _CALLS.get()
        first, calls[0] = calls[0] % world, calls[0] + 1
    owner = owners(len(batches), world, first, costs)
    mine = []
    for batch, batch_owner in zip(batches, owner, strict=True):
        if batch_owner == rank:
            mine.append(compute(batch))
            if progress_bar is not None:
                progress_bar.update()
    if world == 1:
        return mine
    results = in_batch_order(all_gather_objects(mine), owner)
    if progress_bar is not None:
        progress_bar.update(len(batches) - len(mine))  # the other ranks' batches are done too
    return results
