"""The study's DCLS models as timm names: ``timm.create_model("convnext_tiny_dcls")`` after ``import dcls_lib``.

Each ``<timm name>_dcls`` builds timm's model and converts it with the published settings (dilated
size, taps, version); ``pretrained=True`` loads the authors' checkpoint through ``load_pretrained``.
The DCLS settings can be overridden with ``dilated_kernel_size=``, ``kernel_count=``, ``version=``
and ``share_positions=`` (a pretrained load then fails unless they match the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import timm
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model
from torch import nn

from .checkpoints import PUBLISHED, load_pretrained
from .convert import convert_to_dcls

_DCLS_OPTIONS = ("dilated_kernel_size", "kernel_count", "version", "share_positions")


@dataclass(frozen=True)
class StudyModel:
    """One of the study's eight architectures, its timm pretrained tag, and its published DCLS settings."""

    base: str
    base_tag: str
    dilated_kernel_size: int
    kernel_count: int
    version: str

    @property
    def dcls_name(self) -> str:
        return f"{self.base}_dcls"


STUDY_MODELS: dict[str, StudyModel] = {
    m.base: m
    for m in (
        StudyModel("resnet50", "a1_in1k", 7, 5, "v0"),
        StudyModel("convnext_tiny", "fb_in1k", 17, 34, "v0"),
        StudyModel("convnext_small", "fb_in1k", 17, 40, "v0"),
        StudyModel("convnext_base", "fb_in1k", 17, 40, "v0"),
        StudyModel("caformer_s18", "sail_in1k", 17, 34, "v1"),
        StudyModel("convformer_s18", "sail_in1k", 17, 40, "v1"),
        StudyModel("fastvit_sa24", "apple_in1k", 17, 34, "v1"),
        StudyModel("fastvit_sa36", "apple_in1k", 17, 34, "v1"),
    )
}


def study_model_names() -> list[str]:
    """The study's 16 models: each baseline followed by its DCLS version."""
    return [name for m in STUDY_MODELS.values() for name in (m.base, m.dcls_name)]


def _dcls_cfg(model: StudyModel) -> dict:
    cfg = get_pretrained_cfg(f"{model.base}.{model.base_tag}").to_dict()
    spec = PUBLISHED[model.dcls_name]
    cfg.update(url=spec.url, hf_hub_id=None, hf_hub_filename=None, license=None, notes=(spec.source,))
    return cfg


default_cfgs = generate_default_cfgs({f"{m.dcls_name}.authors_in1k": _dcls_cfg(m) for m in STUDY_MODELS.values()})


def _create(study: StudyModel, pretrained: bool, kwargs: dict) -> nn.Module:
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    directory = kwargs.pop("cache_dir", None)
    options = dict(
        dilated_kernel_size=study.dilated_kernel_size, kernel_count=study.kernel_count, version=study.version
    )
    options.update({k: kwargs.pop(k) for k in _DCLS_OPTIONS if k in kwargs})
    model = timm.create_model(study.base, pretrained=False, **kwargs)
    convert_to_dcls(model, **options)
    if pretrained_cfg is None:
        pretrained_cfg = get_pretrained_cfg(study.dcls_name)
    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg)
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained:
        load_pretrained(model, study.dcls_name, directory=directory)
    return model


@register_model
def resnet50_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-50 with every 3x3 conv of its blocks as DCLS (7x7, 5 taps, v0); DCLS paper."""
    return _create(STUDY_MODELS["resnet50"], pretrained, kwargs)


@register_model
def convnext_tiny_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """ConvNeXt-T with DCLS depthwise convs (17x17, 34 taps, v0); ConvNeXt-dcls."""
    return _create(STUDY_MODELS["convnext_tiny"], pretrained, kwargs)


@register_model
def convnext_small_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """ConvNeXt-S with DCLS depthwise convs (17x17, 40 taps, v0); ConvNeXt-dcls."""
    return _create(STUDY_MODELS["convnext_small"], pretrained, kwargs)


@register_model
def convnext_base_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """ConvNeXt-B with DCLS depthwise convs (17x17, 40 taps, v0); ConvNeXt-dcls."""
    return _create(STUDY_MODELS["convnext_base"], pretrained, kwargs)


@register_model
def caformer_s18_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """CAFormer-S18 with DCLS in its SepConv mixers (17x17, 34 taps, v1)."""
    return _create(STUDY_MODELS["caformer_s18"], pretrained, kwargs)


@register_model
def convformer_s18_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """ConvFormer-S18 with DCLS in its SepConv mixers (17x17, 40 taps, v1)."""
    return _create(STUDY_MODELS["convformer_s18"], pretrained, kwargs)


@register_model
def fastvit_sa24_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """FastViT-SA24 with DCLS depthwise 7x7s (ConvFFN and positional encoding; 17x17, 34 taps, v1)."""
    return _create(STUDY_MODELS["fastvit_sa24"], pretrained, kwargs)


@register_model
def fastvit_sa36_dcls(pretrained: bool = False, **kwargs) -> nn.Module:
    """FastViT-SA36 with DCLS depthwise 7x7s (ConvFFN and positional encoding; 17x17, 34 taps, v1)."""
    return _create(STUDY_MODELS["fastvit_sa36"], pretrained, kwargs)


def create_study_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: Union[str, None] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    **kwargs,
) -> nn.Module:
    """One of the 16 study models by name, with its published weights loaded the same way for all.

    Baselines and DCLS models alike load their published file (downloaded once, or ``checkpoint_path``)
    through ``load_pretrained``; ``pretrained=False`` and no path gives fresh weights.
    """
    if name not in study_model_names():
        raise KeyError(f"{name!r} is not one of the study's models: {study_model_names()}")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained or checkpoint_path is not None:
        load_pretrained(model, name, path=checkpoint_path, directory=cache_dir, progress=progress)
    return model
