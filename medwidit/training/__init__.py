"""medwidit.training."""
