"""The Grad-CAM study's models: timm architectures converted to DCLS."""

from .convert import (
    DclsSpec,
    convert_to_dcls,
    convert_to_dilated,
    default_dilation,
    iso_kernel_count,
    parameter_count,
    tie_positions,
    to_dense,
)
from .families import FAMILIES, Family, detect_family

__all__ = [
    "FAMILIES",
    "DclsSpec",
    "Family",
    "convert_to_dcls",
    "convert_to_dilated",
    "default_dilation",
    "detect_family",
    "iso_kernel_count",
    "parameter_count",
    "tie_positions",
    "to_dense",
]
