"""The resumable training loader: restored positions continue the stream exactly."""

from __future__ import annotations

import itertools
from typing import Dict, List

import numpy as np
import pytest
import torch

from mvit_det.engine.train_loader import DataLoadingError, ResumableTrainLoader, seeded_rngs

# Landscape and portrait images, so that the aspect-ratio buckets hold waiting samples.
RECORDS = [
    {"image_id": i, "file_name": f"{i}.jpg", "width": 200 if i % 3 else 120, "height": 160}
    for i in range(10)
]


def augment(record: Dict) -> Dict:
    """A mapper that draws from every global RNG, as augmentations do."""
    return {
        **record,
        "draw": [np.random.uniform(), torch.rand(1).item(), float(np.random.randint(1000))],
    }


def take(loader: ResumableTrainLoader, batches: int) -> List[List[tuple]]:
    stream = iter(loader)
    return [[(s["image_id"], tuple(s["draw"])) for s in next(stream)] for _ in range(batches)]


def loader(**kwargs) -> ResumableTrainLoader:
    return ResumableTrainLoader(RECORDS, augment, batch_size=3, seed=7, **kwargs)


def test_restored_state_continues_the_stream_exactly():
    reference = take(loader(), 12)  # more than an epoch: a new permutation is drawn
    first = loader()
    stream = iter(first)
    for _ in range(7):
        next(stream)
    state = first.state_dict()
    assert state["pending"], "the test needs samples waiting in a bucket"
    assert state == {"seed": 7, **{k: state[k] for k in ("next", "pending")}, "world_size": 1}

    resumed = loader()
    resumed.load_state_dict(state)
    np.random.seed(123)  # the global RNG state of the new process does not matter
    assert take(resumed, 5) == reference[7:]
    # every batch is of one orientation
    orientation = {r["image_id"]: r["width"] > r["height"] for r in RECORDS}
    assert all(len({orientation[i] for i, _ in batch}) == 1 for batch in reference)


def test_workers_give_the_same_stream_and_leave_global_rngs_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    reference = take(loader(), 6)
    assert torch.equal(torch.rand(1), before)  # mapping in this process restored the RNG
    assert take(loader(num_workers=2), 6) == reference


def test_ranks_read_disjoint_images_of_each_epoch():
    seen = []
    for rank in range(2):
        rank_loader = ResumableTrainLoader(
            RECORDS, augment, batch_size=1, seed=3, rank=rank, world_size=2,
            aspect_ratio_grouping=False,
        )  # fmt: skip
        seen.append([batch[0]["image_id"] for batch in itertools.islice(rank_loader, 5)])
    assert sorted(seen[0] + seen[1]) == list(range(10))


def test_mapping_errors_name_the_image():
    def broken(record: Dict) -> Dict:
        raise OSError("cannot identify image file")

    with pytest.raises(DataLoadingError, match=r"training image '\d\.jpg'.*cannot identify"):
        next(iter(ResumableTrainLoader(RECORDS, broken, batch_size=2, seed=0)))


def test_seeded_rngs_restore_the_previous_state():
    np.random.seed(5)
    expected = np.random.uniform()
    np.random.seed(5)
    with seeded_rngs(99):
        inside = np.random.uniform()
    assert np.random.uniform() == expected
    with seeded_rngs(99):
        assert np.random.uniform() == inside
