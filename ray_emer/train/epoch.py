"""Where a rank is in its epoch, and how ranks get through an epoch together (no Ray here).

``TrainState`` is the loop's position: optimizer steps, the epoch, and the clip ids whose
gradients are already in the weights, so a run resumed mid-epoch goes on with the
epoch's other rows (``rebatch``), none twice and none skipped, whatever order the data
comes in. ``joined`` keeps every rank stepping until all are out of data (one
all-reduce per micro-batch), since the rows left after a resume need not be spread
evenly. ``loop.train`` uses both; the Ray Train wiring saves and restores ``TrainState``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)  # per optimizer step
    samples: int = 0
    # Where the run is in its epoch: the clip ids whose gradients are in the weights. ``epoch_seen``: this
    # rank's since the (re)start; ``epoch_restored``: every rank's up to the checkpoint a resumed run began
    # at. A resumed epoch goes on with the rest of its rows: none twice, none skipped.
    epoch_seen: list[str] = dataclasses.field(default_factory=list)
    epoch_restored: list[str] = dataclasses.field(default_factory=list)
    last_epoch: dict | None = None  # the last finished epoch's {"epoch", "restored", "seen"} (reports, tests)
    # stage 3 (GRPO) only: mean reward and KL per optimizer step, and the identity of the frozen reference
    rewards: list[float] = dataclasses.field(default_factory=list)
    kls: list[float] = dataclasses.field(default_factory=list)
    reference: str = ""


def rebatch(batches: Iterable[dict], keep: Callable[[str], bool], batch_size: int) -> Iterator[dict]:
    """Columnar batches -> the rows whose ``clip_id`` ``keep`` accepts, regrouped into ``batch_size`` batches."""
    buf: list[dict] = []
    for batch in batches:
        rows = [i for i, cid in enumerate(batch["clip_id"]) if keep(str(cid))]
        if rows:
            buf.append({k: v[rows] for k, v in batch.items()})
        while sum(len(b["clip_id"]) for b in buf) >= batch_size:
            merged = {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
            yield {k: v[:batch_size] for k, v in merged.items()}
            rest = {k: v[batch_size:] for k, v in merged.items()}
            buf = [rest] if len(rest["clip_id"]) else []
    if buf:
        yield {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}


def collective_world() -> tuple[int, str]:
    """(world size, device type of collectives) of the initialised process group, (1, "") without one."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1, ""
    return dist.get_world_size(), "cuda" if dist.get_backend() == "nccl" else "cpu"


def joined(batches: Iterable[dict]) -> Iterator[dict | None]:
    """Every rank's batches until every rank is out: a rank whose data ends first gets ``None`` (an idle,
    zero-weight micro-step) while others still have some, so all ranks run the same collectives. Ray Data
    splits rows evenly, but a resumed epoch's remaining rows need not be spread evenly over the ranks."""
    world, device = collective_world()
    it = iter(batches)
    while True:
        batch = next(it, None)
        if world > 1:
            flag = torch.tensor([0 if batch is None else 1], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if not int(flag.item()):
                return
        elif batch is None:
            return
        yield batch


class EpochFeed:
    """One rank's batches, epoch by epoch, as the loop steps through them: the rows not yet in the weights
    (all of them, unless the epoch was resumed), joined with the other ranks (``None`` once this rank is out
    and others are not). Keeps ``idle``, the first batch it ever yielded (what an out-of-data rank runs at zero
    weight; kept across epochs), and ``raw``, how many batches the data yielded this epoch (an empty epoch
    is an error, not an endless loop)."""

    def __init__(self, epoch_batches: Callable[[int], Iterable[dict]], batch_size: int):
        self.epoch_batches, self.batch_size = epoch_batches, batch_size
        self.idle: dict | None = None
        self.raw = 0

    def epoch(self, state: TrainState) -> Iterator[dict | None]:
        """The batches of ``state.epoch`` still to train (``state.epoch_restored``/``epoch_seen`` are done)."""
        self.raw = 0
        seen = set(state.epoch_restored) | set(state.epoch_seen)
        source = self._counted(state.epoch)
        if seen:
            source = rebatch(source, lambda cid: cid not in seen, self.batch_size)
        return joined(source)

    def _counted(self, epoch: int) -> Iterator[dict]:
        for batch in self.epoch_batches(epoch):
            self.raw += 1
            self.idle = batch if self.idle is None else self.idle
            yield batch
