"""DCLS layers: convolutions with learnable tap positions, in 1-D, 2-D and 3-D."""

from .dcls import Dcls1d, Dcls2d, Dcls3d, DclsNd, position_limits
from .fast_conv import FastConv1d, FastConv2d, FastConv3d
from .interpolation import ALIASES, INTERPOLATIONS, get_interpolation, profile
from .kernel import construct_kernel
from .reference import from_reference_state_dict, reference_axis_order

__all__ = [
    "ALIASES",
    "INTERPOLATIONS",
    "Dcls1d",
    "Dcls2d",
    "Dcls3d",
    "DclsNd",
    "FastConv1d",
    "FastConv2d",
    "FastConv3d",
    "construct_kernel",
    "from_reference_state_dict",
    "get_interpolation",
    "position_limits",
    "profile",
    "reference_axis_order",
]
