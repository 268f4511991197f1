"""Seeded sampling cases whose outputs were recorded before the samplers took their schedule as arguments.

``python tests/diffusion/sampler_reference.py`` wrote ``data/sampler_reference.pt`` at commit 317c463 (samplers that
read a mutated MONAI scheduler); ``test_samplers.py`` checks that today's code gives the same tensors bit for bit.
Re-recorded when each case of a batch got its own noise (one generator per member had drawn the whole batch's), after
checking that every case sampled alone gives what it gave at the commit before, bit for bit, and that each case of
the new batch output is that case sampled alone.
The stand-in network is elementwise arithmetic without transcendental functions, so that the reference does not
depend on the CPU's vector unit. The samplers' own transcendental functions act on scalars, except in
``VECTOR_EXP_CASES``: learned-range DDPM takes the exp of a per-voxel log-variance, and PyTorch's vectorised exp rounds
differently by an ulp on AVX-512 and AVX2 CPUs (recorded on an AMD EPYC; on an Intel Xeon 3 of 300 values differ by
4.5e-8), so those cases are compared to float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medwidit.diffusion import DiffusionSegmenter

REFERENCE = Path(__file__).parent / "data" / "sampler_reference.pt"

# name -> (segmenter options, sample options, spatial dims)
CASES = {
    "ddim_sample": ({"objective": "sample"}, {}, 2),
    "ddim_sample_eta": ({"objective": "sample"}, {"eta": 0.5}, 2),
    "ddim_epsilon": ({"objective": "epsilon"}, {}, 2),
    "ddim_v_3d": ({"objective": "v_prediction"}, {}, 3),
    "ddim_guided": ({"objective": "sample", "cond_drop_prob": 0.1}, {"guidance_scale": 2.0}, 2),
    "ddpm_fixed_small": ({"objective": "sample", "scheduler": "ddpm"}, {}, 2),
    "ddpm_fixed_large_eps": ({"objective": "epsilon", "scheduler": "ddpm", "variance_type": "fixed_large"}, {}, 2),
    "ddpm_learned_range": ({"objective": "sample", "scheduler": "ddpm", "learn_sigma": True}, {}, 2),
    "flow_euler": ({"objective": "flow"}, {}, 2),
    "flow_euler_3d": ({"objective": "flow"}, {}, 3),
}

VECTOR_EXP_CASES = frozenset({"ddpm_learned_range"})


class ArithmeticNet(torch.nn.Module):
    """``net(x_t, t, conditioned=image)``: a smooth function of x_t, the image and t with only +, *, / and clamp."""

    def __init__(self, learn_sigma: bool = False):
        super().__init__()
        self.learn_sigma = learn_sigma

    def forward(self, x, t, conditioned=None):
        s = (t / 1000).reshape((-1,) + (1,) * (x.ndim - 1))
        out = 0.5 * x + 0.25 * conditioned * (1 - s) - 0.1 * s
        if self.learn_sigma:
            out = torch.cat([out, (0.3 * x).clamp(-1, 1)], dim=1)
        return out


def run_case(name: str) -> torch.Tensor:
    """The ensemble (2 members, 4 steps) that case ``name`` draws with seed 0."""
    options, sample_options, spatial_dim = CASES[name]
    net = ArithmeticNet(learn_sigma=options.get("learn_sigma", False))
    segmenter = DiffusionSegmenter(net, num_classes=3, **options)
    image = torch.linspace(-1, 1, 2 * 5**spatial_dim).reshape((2, 1) + (5,) * spatial_dim)
    generator = torch.Generator().manual_seed(0)
    return segmenter.sample(image, steps=4, num_samples=2, generator=generator, **sample_options)


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save({name: run_case(name) for name in CASES}, REFERENCE)
    print(f"wrote {REFERENCE}")
