"""medwidit.data."""
