"""Test-wide settings: one intra-op thread. The tests use tiny models, where a second thread gains nothing and, on a
2-core machine with anything else running, spin-waiting threads made them up to 10x slower."""

import logging

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI's main() configures the 'medwidit' logger for a terminal; every test gets the logger it started with."""
    logger = logging.getLogger("medwidit")
    state = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = state
