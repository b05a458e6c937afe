"""A training data loader whose position can be saved and restored exactly.

Detectron2's training loader draws from an infinite shuffled index stream and augments with the
global numpy RNG; neither can be saved, so a resumed run re-reads the first images in a new random
order. Here every sample is a function of its position in the stream:

- position ``j`` of rank ``r`` (of ``W``) is stream element ``g = j * W + r``; element ``g`` is image
  ``permutation(seed, g // N)[g % N]`` of the ``N`` images (a fresh permutation per epoch, shared
  by all ranks, so the ranks read disjoint images);
- it is mapped (read, augmented) with Python's, numpy's and torch's RNGs seeded from
  ``(seed, g)``, so the augmentation does not depend on which process maps it or on what ran
  before;
- batches are grouped by aspect ratio (landscape / portrait, as Detectron2 does).

The loader's state is the seed, the next position, and the positions waiting in the aspect-ratio
buckets; restoring it continues the stream exactly where it was saved, with any number of workers.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

__all__ = [
    "ITERATION_SEED_KEY",
    "DataLoadingError",
    "ResumableTrainLoader",
    "derive_seed",
    "seed_all",
    "seeded_rngs",
]

# First keys of derive_seed, so that the seeds of different purposes never coincide.
_ORDER, _AUGMENTATION, ITERATION_SEED_KEY = 0, 1, 2


class DataLoadingError(RuntimeError):
    """A training image or its annotations could not be read or mapped."""


def derive_seed(*keys: int) -> int:
    """
    A 63-bit seed determined by ``keys`` and well spread for nearby keys.

    Args:
        keys: non-negative integers, e.g. (base seed, rank, iteration).

    Returns:
        the seed.
    """
    high, low = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def seed_all(seed: int) -> None:
    """Seeds Python's, numpy's and torch's (CPU and CUDA) global RNGs from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """
    Runs the block with Python's, numpy's and torch's CPU RNGs seeded from ``seed``, and puts
    their previous states back afterwards.

    Args:
        seed: the seed.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_all(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _as_is(sample: Any) -> Any:
    """The loader's collate function: samples pass unchanged (no conversion to tensors)."""
    return sample


class _SampleStream(torchdata.IterableDataset):
    """
    Yields ``(position, mapped sample or None)`` for the positions ``pending`` and then
    ``start, start + 1, ...`` of one rank; with several loader workers, worker ``w`` of ``k``
    maps every ``k``-th of them, so that the in-order loader returns them in order.
    """

    def __init__(
        self,
        dataset: DatasetFromList,
        mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
        seed: int,
        rank: int,
        world_size: int,
        pending: Sequence[int],
        start: int,
    ) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pending = list(pending)
        self.start = start

    def _positions(self) -> Iterator[int]:
        yield from self.pending
        position = self.start
        while True:
            yield position
            position += 1

    def __iter__(self) -> Iterator[Tuple[int, Optional[Dict[str, Any]]]]:
        info = torchdata.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        size = len(self.dataset)
        epoch, order = -1, None
        for element, position in enumerate(self._positions()):
            if element % workers != worker:
                continue
            index = position * self.world_size + self.rank
            if index // size != epoch:
                epoch = index // size
                generator = torch.Generator().manual_seed(derive_seed(self.seed, _ORDER, epoch))
                order = torch.randperm(size, generator=generator).tolist()
            record = self.dataset[order[index % size]]
            try:
                with seeded_rngs(derive_seed(self.seed, _AUGMENTATION, index)):
                    sample = self.mapper(record)
            except Exception as e:
                raise DataLoadingError(
                    f"could not read or augment training image {record.get('file_name')!r} "
                    f"(image_id {record.get('image_id')}): {type(e).__name__}: {e}"
                ) from e
            yield position, sample


class ResumableTrainLoader:
    """
    An infinite iterable of per-rank training batches (lists of mapped dataset dicts) whose
    position can be saved with :meth:`state_dict` and restored with :meth:`load_state_dict`.

    Args:
        dataset: the dataset dicts (e.g. from ``get_detection_dataset_dicts``).
        mapper: maps a dataset dict to the model's input (e.g. ``DatasetMapper``); may return
            None to skip the sample.
        batch_size: images per batch of this process.
        seed: base seed of the order and the augmentation; the same on every rank.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        num_workers: loader processes (0: map in this process).
        rank: this process's rank (default: Detectron2's ``comm``).
        world_size: number of processes (default: Detectron2's ``comm``).
    """

    def __init__(
        self,
        dataset: Sequence[Dict[str, Any]],
        mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
        batch_size: int,
        seed: int,
        *,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not len(dataset):
            raise ValueError("the training dataset is empty")
        self.dataset = (
            dataset
            if isinstance(dataset, DatasetFromList)
            else DatasetFromList(dataset, copy=False)
        )
        self.mapper = mapper
        self.batch_size = batch_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self.seed = seed
        self._start = 0
        self._pending: List[int] = []
        self._live: Optional[_BatchIterator] = None

    def state_dict(self) -> Dict[str, Any]:
        """
        The position after the last batch taken from the current iterator (or where the next
        iterator starts), as plain data.

        Returns:
            ``{"seed", "next", "pending", "world_size"}``.
        """
        start, pending = (
            (self._live.next_position, self._live.pending())
            if self._live is not None
            else (self._start, list(self._pending))
        )
        return {"seed": self.seed, "next": start, "pending": pending, "world_size": self.world_size}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """
        Makes the next iterator continue from a saved position.

        Args:
            state: a :meth:`state_dict` of a loader with the same dataset, batch size and number
                of processes.
        """
        self.seed = int(state["seed"])
        self._start = int(state["next"])
        self._pending = [int(p) for p in state["pending"]]
        self._live = None

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        stream = _SampleStream(
            self.dataset,
            self.mapper,
            self.seed,
            self.rank,
            self.world_size,
            self._pending,
            self._start,
        )
        samples: Any = stream
        if self.num_workers > 0:
            samples = torchdata.DataLoader(
                stream, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is
            )
        self._live = _BatchIterator(
            iter(samples), self.batch_size, self.aspect_ratio_grouping, self._start
        )
        return self._live


class _BatchIterator:
    """Groups an ordered ``(position, sample)`` stream into batches and tracks the position."""

    def __init__(
        self,
        samples: Iterator[Tuple[int, Optional[Dict[str, Any]]]],
        batch_size: int,
        aspect_ratio_grouping: bool,
        start: int,
    ) -> None:
        self.samples = samples
        self.batch_size = batch_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.next_position = start
        # bucket 0: landscape, 1: portrait or square; (position, sample) in arrival order
        self.buckets: Tuple[List[Tuple[int, Dict[str, Any]]], ...] = ([], [])

    def pending(self) -> List[int]:
        """Positions taken from the stream and waiting in a bucket, in arrival order."""
        return sorted(position for bucket in self.buckets for position, _ in bucket)

    def __iter__(self) -> "_BatchIterator":
        return self

    def __next__(self) -> List[Dict[str, Any]]:
        while True:
            position, sample = next(self.samples)
            self.next_position = max(self.next_position, position + 1)
            if sample is None:
                continue
            landscape = sample["width"] > sample["height"]
            bucket = self.buckets[0 if landscape or not self.aspect_ratio_grouping else 1]
            bucket.append((position, sample))
            if len(bucket) == self.batch_size:
                batch = [s for _, s in bucket]
                bucket.clear()
                return batch
