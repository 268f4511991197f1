"""medwidit.datasets: builders of real data from the package registries (``brain``: brain templates and atlases).

A room above ``medwidit.data``: builders may use the generic data code and ``medwidit.utils``, never the reverse.
"""
