"""dcls_lib: Dilated Convolution with Learnable Spacings and the study of its human alignment."""

from .layers import Dcls1d, Dcls2d, Dcls3d, construct_kernel, from_reference_state_dict
from . import models  # noqa: F401  registers the study's <timm name>_dcls models with timm

__version__ = "0.1.0"
__all__ = ["Dcls1d", "Dcls2d", "Dcls3d", "construct_kernel", "from_reference_state_dict", "__version__"]
