"""Small helpers every room may use (the bottom room: imports nothing of medwidit's).

``files``: atomic, never-silently-overwriting writes; ``checks``: argument checks with messages that name the value.
"""

from .checks import (
    check_bool,
    check_int,
    check_interval,
    check_options,
    check_per_axis,
    check_range,
    check_seed,
    choose,
    is_finite_number,
    is_integer,
)
from .files import (
    atomic_write,
    commit,
    image_grid,
    itk_ras_affine,
    label_values,
    sha256_file,
    temporary_path,
    voxel_reorder,
)
from .numeric import wide_float

__all__ = [
    "atomic_write",
    "check_bool",
    "check_int",
    "check_interval",
    "check_seed",
    "check_options",
    "check_per_axis",
    "check_range",
    "choose",
    "commit",
    "image_grid",
    "label_values",
    "is_finite_number",
    "is_integer",
    "itk_ras_affine",
    "sha256_file",
    "temporary_path",
    "voxel_reorder",
    "wide_float",
]
