"""medwidit: medical volume segmentation by conditional diffusion with a windowed diffusion transformer."""

__version__ = "0.1.0"
