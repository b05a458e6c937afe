"""Shared fixtures: a small synthetic shapes dataset for the data, config and tool tests."""

import logging
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


@pytest.fixture(autouse=True)
def _drop_log_handlers_of_closed_streams():
    """Tools set up Detectron2's loggers with a handler on the sys.stdout/stderr of the moment:
    within pytest that is a capture stream, closed after its test. Such handlers are removed
    after every test, so later tests' output holds no "--- Logging error ---" noise."""
    yield
    for logger in [logging.getLogger()] + [
        l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger)
    ]:
        for handler in list(logger.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)
