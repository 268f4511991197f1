"""Test-wide settings: one intra-op thread. The tests use tiny models, where a second thread gains nothing and, on a
2-core machine with anything else running, spin-waiting threads made them up to 10x slower."""

import torch

torch.set_num_threads(1)
