"""Shared fixtures: a small synthetic shapes dataset for the data, config and tool tests."""

import os

import pytest

from helpers import TINY_SIZES


@pytest.fixture(scope="session")
def shapes_datasets_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A $DETECTRON2_DATASETS folder holding a tiny ``mvit_shapes`` dataset, registered as
    ``shapes_train`` / ``shapes_val`` for the test session (the default registration is
    restored afterwards)."""
    from mvit_det.data import generate_shapes_dataset, register_shapes_dataset

    root = str(tmp_path_factory.mktemp("datasets"))
    generate_shapes_dataset(os.path.join(root, "mvit_shapes"), TINY_SIZES)
    register_shapes_dataset(os.path.join(root, "mvit_shapes"))
    yield root
    register_shapes_dataset()
