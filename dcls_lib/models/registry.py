"""The study's DCLS models as timm names: ``timm.create_model("convnext_tiny_dcls")`` after ``import dcls_lib``.

Each ``<timm name>_dcls`` builds timm's model and converts it with the published settings (dilated
size, taps, version); ``pretrained=True`` loads the authors' checkpoint through the project's mapping
of their layout.  The DCLS settings can be overridden with ``dilated_kernel_size=``,
``kernel_count=``, ``version=`` and ``share_positions=`` (a pretrained load then fails unless they
match the checkpoint).

They take timm's usual arguments and behave as timm's baselines do:

- ``features_only=True`` (with ``out_indices=``, ``feature_cls="list"|"dict"``): the model is
  converted first and then wrapped as timm wraps the baseline, so the feature maps come from DCLS layers.
- ``pretrained=True`` with ``num_classes=`` (another head, or 0 for none) and ``in_chans=``: the
  published weights are loaded, the classifier is left freshly initialised (or dropped), and the stem's
  weights are summed or repeated over input channels as timm's ``adapt_input_conv`` does.
- ``pretrained_cfg_overlay=dict(file=PATH)`` reads a local copy of the published file.
- ``checkpoint_path=PATH`` (timm loads it with ``load_state_dict`` after building): a state dict in the
  authors' published layout is recognised and mapped (names, reference positions) exactly as
  ``pretrained=True`` maps it; one in the model's own names loads as it is; either way it is checked
  first (missing, unexpected, mis-shaped keys, and shared positions given different values), so
  nothing loads silently wrong.
- ``torch.jit.script(model)`` compiles the model's dense equivalent (``to_dense`` of a copy): inference
  with the taps frozen where they are; the eager model keeps its DCLS layers.  DCLS layers themselves
  refuse scripting with a message that says this; ``torch.export`` traces them as they are.
- fx: the DCLS layers are registered as leaf modules with timm, so timm's fx feature extraction
  (``feature_cls="fx"`` style graph nets, ``create_feature_extractor``) traces around them.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from dataclasses import dataclass
from typing import Optional, Union

import timm
from timm.layers import register_notrace_module
from timm.models import FeatureDictNet, FeatureListNet, adapt_input_conv, clean_state_dict, generate_default_cfgs
from timm.models import get_pretrained_cfg, register_model
from timm.models._builder import pretrained_cfg_for_features
from torch import nn

from ..layers import Dcls1d, Dcls2d, Dcls3d
from . import checkpoints
from .convert import convert_to_dcls, to_dense
from .families import FAMILIES, DclsDefaults

_DCLS_OPTIONS = ("dilated_kernel_size", "kernel_count", "version", "share_positions")

for _layer in (Dcls1d, Dcls2d, Dcls3d):
    register_notrace_module(_layer)  # timm's fx tracing keeps them whole (their forward checks inputs)

# How timm wraps each family's baseline for ``features_only`` (its ``feature_cfg`` per family).
_FEATURE_CFG = {
    "resnet": dict(out_indices=(0, 1, 2, 3, 4), flatten_sequential=False),
    "convnext": dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
    "metaformer": dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
    "fastvit": dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
}
_FEATURE_CLASSES = {"list": FeatureListNet, "dict": FeatureDictNet}


@dataclass(frozen=True)
class StudyModel:
    """One of the study's eight architectures, its timm pretrained tag, and the published DCLS settings
    its ``_dcls`` model is built with unless told otherwise."""

    base: str
    base_tag: str
    defaults: DclsDefaults

    @property
    def dcls_name(self) -> str:
        return f"{self.base}_dcls"


def _published(family: str, **changes) -> DclsDefaults:
    """The family's DCLS defaults (its smallest published model's), with what a larger one changes."""
    return dataclasses.replace(FAMILIES[family].defaults, **changes)


STUDY_MODELS: dict[str, StudyModel] = {
    m.base: m
    for m in (
        StudyModel("resnet50", "a1_in1k", _published("resnet")),
        StudyModel("convnext_tiny", "fb_in1k", _published("convnext")),
        StudyModel("convnext_small", "fb_in1k", _published("convnext", kernel_count=40)),
        StudyModel("convnext_base", "fb_in1k", _published("convnext", kernel_count=40)),
        StudyModel("caformer_s18", "sail_in1k", _published("metaformer")),
        StudyModel("convformer_s18", "sail_in1k", _published("metaformer", kernel_count=40)),
        StudyModel("fastvit_sa24", "apple_in1k", _published("fastvit")),
        StudyModel("fastvit_sa36", "apple_in1k", _published("fastvit")),
    )
}


def study_model_names() -> list[str]:
    """The study's 16 models: each baseline followed by its DCLS version."""
    return [name for m in STUDY_MODELS.values() for name in (m.base, m.dcls_name)]


def _dcls_cfg(model: StudyModel) -> dict:
    cfg = get_pretrained_cfg(f"{model.base}.{model.base_tag}").to_dict()
    spec = checkpoints.PUBLISHED[model.dcls_name]
    cfg.update(url=spec.url, hf_hub_id=None, hf_hub_filename=None, license=None, notes=(spec.source,))
    return cfg


default_cfgs = generate_default_cfgs({f"{m.dcls_name}.authors_in1k": _dcls_cfg(m) for m in STUDY_MODELS.values()})


def _resolve_cfg(study: StudyModel, pretrained_cfg, overlay: Optional[dict]) -> dict:
    """The model's pretrained config as a dict: timm's tag, config object or dict, then the overlay."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        name = study.dcls_name if not pretrained_cfg else f"{study.dcls_name}.{pretrained_cfg}"
        resolved = get_pretrained_cfg(name)
        if resolved is None:
            raise ValueError(f"{name!r} has no pretrained config; the published one is {study.dcls_name}.authors_in1k")
        pretrained_cfg = resolved
    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg)
    overlay = dict(overlay or {})
    if overlay.get("url") or overlay.get("hf_hub_id"):
        raise ValueError(
            f"{study.dcls_name} loads its published file or a local one (pretrained_cfg_overlay=dict(file=PATH)); "
            "another url or hub id is not supported"
        )
    cfg.update(overlay)
    return cfg


def _names(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def adapt_published_state_dict(state_dict: dict, model: nn.Module, cfg: dict) -> dict:
    """Fit published weights to a model built with another ``in_chans`` or ``num_classes``, as timm does.

    The stem (``cfg["first_conv"]``) is summed or repeated over input channels (``adapt_input_conv``);
    with another class count the classifier (``cfg["classifier"]``) keeps the model's fresh weights, and
    head entries the model no longer has (``num_classes=0``) are dropped.  Everything else must fit.
    """
    own = model.state_dict()
    adapted = dict(state_dict)
    for name in _names(cfg.get("first_conv")):
        key = f"{name}.weight"
        if key in adapted and key in own and adapted[key].shape[1] != own[key].shape[1]:
            adapted[key] = adapt_input_conv(own[key].shape[1], adapted[key])
    if getattr(model, "num_classes", cfg.get("num_classes")) != cfg.get("num_classes"):
        for name in _names(cfg.get("classifier")):
            head = name.split(".")[0] + "."
            for key in [k for k in adapted if k.startswith(head)]:
                if key not in own:
                    del adapted[key]
                elif key.startswith(name + "."):
                    adapted[key] = own[key]
    return adapted


def _load_published(model: nn.Module, name: str, cfg: dict, directory) -> None:
    """Load the published checkpoint (or the overlay's local ``file``), adapted to the model's head and stem."""
    spec = checkpoints.published_checkpoint(name)
    file = checkpoints.resolve_checkpoint(name, cfg.get("file"), directory)
    checkpoints.load_checkpoint(
        model, file, spec.layout, spec.state_keys, spec.reference_version,
        adapt_state_dict=lambda mapped: adapt_published_state_dict(mapped, model, cfg),
    )


class PublishedLayoutRouter:
    """A ``load_state_dict`` pre-hook that reads the authors' published layout as ``pretrained=True`` does.

    timm's ``create_model(..., checkpoint_path=PATH)`` hands the file's state dict to
    ``model.load_state_dict``.  In the model's own names it loads as it is; otherwise it is mapped
    from the published layout (names, reference positions) with ``map_state_dict``, and the model set
    to compute what the layout's authors compute (``adapt_to_layout``).  Strict loads are
    checked with ``check_state_dict`` first, which also refuses positions that the model shares but
    the state dict gives different values (plain ``load_state_dict`` would keep the last silently).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if prefix or not strict:  # nested in a bigger model, or a partial load: the caller knows the names
            return
        own = set(module.state_dict())
        cleaned = clean_state_dict(dict(state_dict))  # drops DataParallel's module. and compile's _orig_mod.
        published = not set(cleaned) <= own
        if published:
            spec = checkpoints.published_checkpoint(self.name)
            cleaned = checkpoints.map_state_dict(cleaned, module, spec.layout, spec.reference_version)
        checkpoints.check_state_dict(module, cleaned, "state dict")
        if published:  # computed as the authors' code computes it (sail-sg's head eps)
            checkpoints.adapt_to_layout(module, spec.layout)
        state_dict.clear()
        state_dict.update(cleaned)


def _wrap_features(model: nn.Module, out_indices, feature_cls) -> nn.Module:
    """The converted model wrapped for ``features_only`` as timm wraps the baseline."""
    cfg = dict(_FEATURE_CFG[model.dcls_spec.family])
    if out_indices is not None:
        cfg["out_indices"] = out_indices
    wrapper = FeatureListNet if feature_cls is None else _FEATURE_CLASSES.get(feature_cls, feature_cls)
    if wrapper not in _FEATURE_CLASSES.values():
        raise ValueError(f"feature_cls must be one of {sorted(_FEATURE_CLASSES)} for the _dcls models, got {feature_cls!r}")
    if getattr(model, "output_fmt", None) is not None:
        cfg["output_fmt"] = model.output_fmt
    features = wrapper(model, **cfg)
    for key in ("_traits", "in_chans"):
        if hasattr(model, key):
            setattr(features, key, getattr(model, key))
    features.pretrained_cfg = features.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    features.dcls_spec = model.dcls_spec
    return features


def _scriptable_copy(model: nn.Module) -> nn.Module:
    """What ``torch.jit.script`` compiles for a ``_dcls`` model: a dense copy (the model itself is untouched)."""
    return to_dense(copy.deepcopy(model))


def _create(study: StudyModel, pretrained: bool, kwargs: dict) -> nn.Module:
    cfg = _resolve_cfg(study, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    directory = kwargs.pop("cache_dir", None)
    features_only = kwargs.pop("features_only", False)
    out_indices, feature_cls = kwargs.pop("out_indices", None), kwargs.pop("feature_cls", None)
    options = study.defaults.options()
    options.update({k: kwargs.pop(k) for k in _DCLS_OPTIONS if k in kwargs})
    model = timm.create_model(study.base, pretrained=False, **kwargs)
    convert_to_dcls(model, **options)
    model.pretrained_cfg = model.default_cfg = cfg
    model.register_load_state_dict_pre_hook(PublishedLayoutRouter(study.dcls_name))
    if pretrained:
        _load_published(model, study.dcls_name, cfg, directory)
    if features_only:
        model = _wrap_features(model, out_indices, feature_cls)
    # torch.jit.script swaps submodules in place for what __prepare_scriptable__ returns: do it on a copy
    model.__prepare_scriptable__ = types.MethodType(_scriptable_copy, model)
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
        checkpoints.load_pretrained(model, name, path=checkpoint_path, directory=cache_dir, progress=progress)
    return model
