"""medwidit.nets."""
