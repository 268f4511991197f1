"""Ensemble -> mean probability, labels, predictive entropy, variance and agreement, per voxel."""

from __future__ import annotations

import torch

from medwidit.diffusion.encoding import to_labels

__all__ = ["check_probabilities", "summarize_ensemble"]


def check_probabilities(p: torch.Tensor, *, dim: int, atol: float = 1e-3) -> None:
    """A ValueError unless ``p`` is finite, >= 0 and sums to 1 over ``dim`` (to ``atol``); NaN fails every
    comparison, so the test is written to pass only on good values."""
    if p.numel() and not (p.min() >= -atol and (p.sum(dim=dim) - 1).abs().max() <= atol):
        raise ValueError(
            f"probabilities must be finite, >= 0 and sum to 1 over the class axis (dim {dim}); "
            f"convert diffusion-space samples with to_probabilities(samples, dim={dim})."
        )


def summarize_ensemble(probabilities: torch.Tensor, *, atol: float = 1e-3) -> dict[str, torch.Tensor]:
    """Per-sample probabilities (S, B, K, *S) -> summary maps (float32 unless said otherwise):

    - ``mean_probability`` (B, K, *S): ``p_bar = mean_s p_s``;
    - ``labels`` (B, 1, *S) int64: ``argmax_K p_bar``;
    - ``entropy`` (B, 1, *S): predictive entropy ``-sum_K p_bar log p_bar`` in nats (0 .. log K);
    - ``variance`` (B, 1, *S): ``mean_K var_s p_s`` (population variance over samples, 0 for one sample);
    - ``agreement`` (B, 1, *S): fraction of samples whose argmax equals ``labels`` (1 where all agree).

    Samples in diffusion space go through ``medwidit.diffusion.to_probabilities(samples, dim=2)`` first.
    """
    if probabilities.ndim not in (5, 6):
        raise ValueError(
            "probabilities must have shape (S, B, K, *spatial) with 2 or 3 spatial axes, "
            f"got {tuple(probabilities.shape)}."
        )
    p = probabilities.float()
    check_probabilities(p, dim=2, atol=atol)
    mean = p.mean(dim=0)  # (B, K, *S)
    labels = to_labels(mean, dim=1)  # (B, 1, *S)
    entropy = torch.special.entr(mean.clamp(0, 1)).sum(dim=1, keepdim=True)  # 0 .. log K: the check allows +-atol
    # the squared deviations' mean, not p.var(dim=0): torch's CPU var over the leading axis is ~10x slower here
    variance = (p - mean).square().mean(dim=0).mean(dim=1, keepdim=True)
    sample_labels = to_labels(p, dim=2)  # (S, B, 1, *S)
    agreement = (sample_labels == labels.unsqueeze(0)).float().mean(dim=0)
    return {
        "mean_probability": mean,
        "labels": labels,
        "entropy": entropy,
        "variance": variance,
        "agreement": agreement,
    }
