"""medwidit.diffusion."""
