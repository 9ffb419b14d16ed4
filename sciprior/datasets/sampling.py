"""Samplers of the training pipeline: per-epoch keys for seeded views, exact resumption from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, seeded, one disjoint shard per rank) yielding ``(index, epoch)``,
    so that the random views of an item depend on the epoch but not on workers or restarts.

    ``position_fn``, when given, returns ``(epoch, samples already consumed in this epoch)`` at the start
    of each pass (the data modules read it from the trainer's progress): the epoch replaces the value of
    ``set_epoch`` (Lightning 2.6 passes a counter that is one ahead after resuming from an end-of-epoch
    checkpoint), and the consumed samples are skipped, so a run resumed from a mid-epoch checkpoint
    (e.g. a SLURM requeue) sees the rest of the epoch exactly.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        position_fn: Callable[[], tuple[int, int]] | None = None,
    ):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.position_fn = position_fn

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip = 0
        if self.position_fn is not None:
            epoch, skip = self.position_fn()
            self.epoch = int(epoch)
        epoch = self.epoch
        for n, i in enumerate(super().__iter__()):
            if n >= skip:
                yield (int(i), epoch)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position is restored by its :class:`EpochSampler` from the trainer's progress.

    It implements Lightning's stateful-loader interface (nothing to store: the position is derived from
    the loop counters in the checkpoint), which tells Lightning that mid-epoch resumption is exact.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"position": "restored from the trainer's progress by EpochSampler"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


__all__ = ["EpochSampler", "ResumableLoader"]
