"""medwidit.inference."""
