"""The widest float a device holds: MPS has no float64 (a float64 tensor there is a TypeError), so the sums and
tables the package keeps in float64 run in float32 there. Here on the CPU, forced to float32 as on MPS, each gives
its float64 values within float32 rounding."""

import pytest
import torch

from medwidit.utils import wide_float


def test_float64_everywhere_but_mps():
    assert wide_float("mps") == wide_float(torch.device("mps")) == torch.float32
    assert wide_float("cpu") == wide_float(None) == wide_float("cuda:0") == torch.float64


@pytest.fixture
def members():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 3, 6, 7, 5, generator=generator)  # (M, B, K, *S)
    return logits.softmax(dim=2)


def _as_on_mps(monkeypatch, *modules):
    for module in modules:
        monkeypatch.setattr(module, "wide_float", lambda device: torch.float32)


def test_trust_and_region_sums_in_float32(monkeypatch, members):
    import medwidit.inference.localize as localize
    import medwidit.inference.trust as trust

    mask = torch.zeros(2, 1, 6, 7, 5, dtype=torch.bool)
    mask[:, :, 1:5, 2:6, 1:4] = True
    calls = (
        lambda: trust.estimated_dice(members),
        lambda: trust.expected_dice(members),
        lambda: localize.foreground_share(members, mask),
        lambda: localize.fill_core(members, mask, 1)[1],
    )
    exact = [call() for call in calls]
    _as_on_mps(monkeypatch, localize, trust)
    for call, want in zip(calls, exact, strict=True):
        got = call()
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-6, atol=1e-6)


def test_rope_angles_in_float32(monkeypatch):
    import medwidit.nets.attention as attention

    exact = attention.rope_angles((4, 3, 2), (4, 4, 4), 16)
    _as_on_mps(monkeypatch, attention)
    got = attention.rope_angles((4, 3, 2), (4, 4, 4), 16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, exact)
