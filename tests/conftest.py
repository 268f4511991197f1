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


@pytest.fixture(autouse=True)
def float32_on_any_cpu(monkeypatch):
    """``precision="auto"`` autocasts to bfloat16 on a CPU with bf16 matmul hardware (AMX: this project's CI machine)
    and runs float32 on others; in-process tests expect the same numbers on every host, so they see a CPU without it.
    The tests of that choice fake the hardware query themselves; tests that run the CLI in a subprocess get the
    host's choice."""
    from medwidit.inference import options

    monkeypatch.setattr(options, "cpu_has_bf16_matmul", lambda: False)
