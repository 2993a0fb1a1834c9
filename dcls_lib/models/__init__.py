"""The Grad-CAM study's models: timm architectures converted to DCLS, their checkpoints and Grad-CAM targets.

Importing this package registers the eight ``<timm name>_dcls`` models with timm.
"""

from . import registry  # noqa: F401  (registers the _dcls models with timm)
from .cam_targets import CamTarget, ImageTransform, cam_target, channels_last_to_nchw, input_transform
from .checkpoints import (
    PUBLISHED,
    CheckpointError,
    PublishedCheckpoint,
    cache_dir,
    check_state_dict,
    download,
    load_checkpoint,
    load_pretrained,
    map_state_dict,
    published_checkpoint,
    read_checkpoint,
)
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
from .registry import STUDY_MODELS, StudyModel, create_study_model, study_model_names

__all__ = [
    "FAMILIES",
    "PUBLISHED",
    "STUDY_MODELS",
    "CamTarget",
    "CheckpointError",
    "DclsSpec",
    "Family",
    "ImageTransform",
    "PublishedCheckpoint",
    "StudyModel",
    "cache_dir",
    "cam_target",
    "channels_last_to_nchw",
    "check_state_dict",
    "convert_to_dcls",
    "convert_to_dilated",
    "create_study_model",
    "default_dilation",
    "detect_family",
    "download",
    "input_transform",
    "iso_kernel_count",
    "load_checkpoint",
    "load_pretrained",
    "map_state_dict",
    "parameter_count",
    "published_checkpoint",
    "read_checkpoint",
    "study_model_names",
    "tie_positions",
    "to_dense",
]
