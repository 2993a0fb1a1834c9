"""The published checkpoints of the study's 16 models: where they are, how to fetch them, how to load them.

Every checkpoint is read the same way: downloaded once into a cache (``$DCLS_CACHE``, else
``~/.cache/dcls_lib``) with a progress bar, or read from a local path; its state dict is taken from
the entry its authors saved it under; its key names are mapped onto timm's model; the positions that
the reference DCLS library saved are moved to this library's convention; and the result is checked
against the model before anything is loaded, with an error that lists missing, unexpected and
mismatched keys.

Where each layout comes from (read from the authors' public code, see ``families`` for the layers):

- ``convnext-official``: ``downsample_layers.*``, ``stages.<s>.<b>.{dwconv,norm,pwconv1,pwconv2,gamma}``,
  ``norm``, ``head``: the official ConvNeXt code (facebookresearch/ConvNeXt ``models/convnext.py``) and
  the authors' ``models/convnext_dcls.py`` (K-H-Ismail/ConvNeXt-dcls), whose blocks hold
  ``dwconv.{weight (C,1,taps), bias, P (2,C,1,taps)}``; the stage's ``P`` lives in a plain Python list,
  so it is saved under every block's ``dwconv.P``.  The state dict is under ``"model"`` (both
  ``convnext_dcls.py`` and the study's ``get_model.py`` load ``checkpoint["model"]``).  Mapped with
  ``timm.models.convnext.checkpoint_filter_fn``.
- ``timm`` (ResNet-50-DCLS): the authors trained timm's ``ResNet`` (``timm/models/resnet_dcls.py`` in
  K-H-Ismail/pytorch-image-models) with timm's ``train.py``, so keys are timm's, with
  ``layer<s>.<b>.conv2.{weight (C,C,taps), P (2,C,C,taps)}``; the state dict is under
  ``"state_dict_ema"`` (as the study loads it).  Also the layout of timm's own weights (baselines).
- ``metaformer-sail``: sail-sg/metaformer ``metaformer_baselines.py`` (``downsample_layers.<s>``,
  ``stages.<s>.<b>.token_mixer.{pwconv1,dwconv,pwconv2}`` as Linear/Conv/Linear, ``norm``, ``head``),
  trained with timm's ``train.py``: ``"state_dict_ema"``.  Mapped with
  ``timm.models.metaformer.checkpoint_filter_fn``.  Its ``MlpHead`` normalises with ``nn.LayerNorm``'s
  eps 1e-5 where timm's uses 1e-6, so a model loading such a file is set to 1e-5 (timm's own
  ``sail_in1k`` weights of the baselines, converted from the same code, keep timm's 1e-6).
- ``fastvit-apple``: apple/ml-fastvit ``models/fastvit.py`` (``patch_embed``, ``network.<i>`` with the
  positional encoding at ``network.6.pe``, ``convffn``, ``conv_exp``, ``head``), trained with timm's
  ``train.py``: ``"state_dict_ema"``.  Mapped with ``timm.models.fastvit.checkpoint_filter_fn``.

The positions: ConvNeXt and ResNet-50 checkpoints were trained with the reference library's ``v0``,
MetaFormer and FastViT ones with ``v1`` (file names ``*_v1_17lim_*``); ``from_reference_state_dict``
converts them.

What could not be established from public code, so the loader checks it instead of assuming it:
- that the CAFormer checkpoint holds exactly the keys of the converted model (the study loads it with
  ``strict=False``, for a reason it does not give; here a mismatch is an error listing the keys);
- that FastViT's positional encoding was converted (the study's final FastViT converter,
  ``fastvit_utils.replace_depthwise_dcls_fastvit``, is missing from its repository; its earlier
  ``replace_depthwise_dcls`` converts every depthwise 7x7, the positional encoding included);
- that blocks of a stage hold equal positions (true by construction of the authors' models; checked
  on load, because a model that shares them would otherwise keep one block's values silently);
- checksums: Zenodo's and the hubs' digests are not recorded in the authors' code, so none is checked
  unless one is passed.
"""

from __future__ import annotations

import argparse
import pickle
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from timm.models import clean_state_dict, convnext, fastvit, metaformer
from torch import nn

from ..files import CACHE_ENV, DownloadError, cache_dir, fetch, file_digest
from ..layers import from_reference_state_dict
from .convert import tie_positions


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not fit the model."""


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One published checkpoint: its address, layout and where in the file its weights are."""

    model: str
    url: str
    filename: str
    layout: str
    state_keys: tuple[str, ...]
    reference_version: Optional[str]  # positions saved by the reference DCLS library with this version
    source: str


_ZENODO = "https://zenodo.org/records/{record}/files/{name}"
_FB = "https://dl.fbaipublicfiles.com/convnext/{name}"
_HF = "https://huggingface.co/timm/{name}/resolve/main/model.safetensors"


def _zenodo(record, layout, keys, version, files: dict[str, str]) -> list[PublishedCheckpoint]:
    """The files (model -> file name) of one Zenodo record that share a layout, state keys and version."""
    source = f"DCLS authors, Zenodo record {record}"
    return [PublishedCheckpoint(model, _ZENODO.format(record=record, name=name), name, layout, keys, version, source)
            for model, name in files.items()]


def _timm_hub(model, tag):
    name = f"{model}.{tag}"
    return PublishedCheckpoint(model, _HF.format(name=name), f"{name}.safetensors", "timm", (), None, f"timm weights {name}")


def _convnext_official(model):
    name = f"{model}_1k_224_ema.pth"
    return PublishedCheckpoint(model, _FB.format(name=name), name, "convnext-official", ("model",), None, "official ConvNeXt")


PUBLISHED: dict[str, PublishedCheckpoint] = {
    c.model: c
    for c in (
        *(_convnext_official(f"convnext_{size}") for size in ("tiny", "small", "base")),
        *_zenodo(7112021, "convnext-official", ("model",), "v0", {
            f"convnext_{size}_dcls": f"convnext_dcls_{size}_1k_224_ema.pth" for size in ("tiny", "small", "base")
        }),
        _timm_hub("resnet50", "a1_in1k"),
        *_zenodo(8373830, "timm", ("state_dict_ema",), "v0", {"resnet50_dcls": "resnet_dcls_kernel_5_model_best.pth.tar"}),
        _timm_hub("caformer_s18", "sail_in1k"),
        _timm_hub("convformer_s18", "sail_in1k"),
        *_zenodo(8370737, "metaformer-sail", ("state_dict_ema",), "v1", {
            "caformer_s18_dcls": "caformer_s18_v1_17lim_34el_seed0.pth.tar",
            "convformer_s18_dcls": "convformer_s18_v1_17lim_40el_seed0.pth.tar",
        }),
        _timm_hub("fastvit_sa24", "apple_in1k"),
        _timm_hub("fastvit_sa36", "apple_in1k"),
        *_zenodo(8370737, "fastvit-apple", ("state_dict_ema",), "v1", {
            "fastvit_sa24_dcls": "fastvit_sa24_v1_17lim_34el_seed0.pth.tar",
            "fastvit_sa36_dcls": "fastvit_sa36_v1_17lim_34el_seed0.pth.tar",
        }),
    )
}


def published_checkpoint(name: str) -> PublishedCheckpoint:
    try:
        return PUBLISHED[name]
    except KeyError:
        raise KeyError(f"no published checkpoint named {name!r}; known: {sorted(PUBLISHED)}") from None


# --- fetching -------------------------------------------------------------------------------------


def _check_digest(path: Path, sha256: Optional[str], what: str) -> None:
    if sha256 is not None:
        actual = file_digest(path, "sha256")
        if actual != sha256.lower():
            raise CheckpointError(f"{what}: sha256 {actual} does not match the expected {sha256}")


def download(
    url: str,
    directory: Union[str, Path, None] = None,
    filename: Optional[str] = None,
    sha256: Optional[str] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` (http(s) or file) into the cache once and return the cached path.

    A file already in the cache is reused.  The download goes to a temporary file in the cache
    directory, is checked against ``sha256`` if given, and only then renamed into place, so a failed
    or interrupted download never leaves a file that looks complete.
    """
    target_dir = cache_dir(directory)
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot tell a file name from {url!r}; pass filename=")
    target = target_dir / name
    if target.is_file():
        _check_digest(target, sha256, f"cached {target}")
        return target
    try:
        fetch(url, target, progress=progress, timeout=timeout,
              verify=lambda tmp: _check_digest(tmp, sha256, f"download of {url}"))
    except DownloadError as error:
        raise CheckpointError(str(error)) from error
    return target


def resolve_checkpoint(
    name: str, path: Union[str, Path, None] = None, directory: Union[str, Path, None] = None, progress: bool = True
) -> Path:
    """A local file for the published checkpoint ``name``: ``path`` if given, else the cached download."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        return path
    spec = published_checkpoint(name)
    return download(spec.url, directory, spec.filename, progress=progress)


# --- reading --------------------------------------------------------------------------------------


def read_checkpoint(path: Union[str, Path], trust: bool = False):
    """The object stored in a ``.safetensors``, ``.pth`` or ``.pth.tar`` file, on the CPU.

    Pickled files are read with ``weights_only=True`` (``argparse.Namespace`` allowed, as timm's
    training checkpoints store their arguments in one); ``trust=True`` lifts that restriction for files
    you trust.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":  # neither torch's zip format nor a (legacy) pickle
                raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (not a zip archive or a pickle)")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f"{path} holds objects that weights-only loading refuses ({', '.join(unsafe)}); "
                "if you trust the file, pass trust=True"
            ) from error
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint, or unreadable: nothing to name
        return []


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj, state_keys: Sequence[str] = (), what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: under the first of ``state_keys`` present, else the object
    itself if it is a plain state dict (a file saved with ``torch.save(model.state_dict())``)."""
    if isinstance(obj, Mapping):
        for key in state_keys:
            if key in obj:
                if not _is_state_dict(obj[key]):
                    raise CheckpointError(f"{what}: entry {key!r} is not a state dict of tensors")
                return dict(obj[key])
        if _is_state_dict(obj):
            return dict(obj)
        raise CheckpointError(
            f"{what} has none of the entries {list(state_keys)} and is not a state dict; "
            f"its top-level keys: {sorted(map(str, obj))[:20]}"
        )
    raise CheckpointError(f"{what} holds a {type(obj).__name__}, not a dict")


# --- mapping --------------------------------------------------------------------------------------


class _UnknownKey:
    """What the lenient state dict returns for keys the model lacks: timm's filters then pass the value on."""

    shape = (-1,)

    def numel(self) -> int:
        return -1


class _LenientStateDict(dict):
    def __missing__(self, key):
        return _UnknownKey()


class _LenientModel:
    """The model as timm's checkpoint filters see it, except that unknown keys do not raise.

    timm's filters look keys up in ``model.state_dict()`` to reshape values; a key the model lacks
    would raise ``KeyError`` there.  Passing such keys on lets the check after mapping list every
    unexpected key at once instead of stopping at the first.  With ``shapes=False`` every key is
    unknown, so no value is reshaped to the model's shape (the filter only renames, and flattens).
    """

    def __init__(self, model: nn.Module, shapes: bool = True):
        self._model = model
        self._state = _LenientStateDict(model.state_dict() if shapes else {})

    def state_dict(self):
        return self._state

    def __getattr__(self, name):
        return getattr(self._model, name)


def _timm_filter(filter_fn: Callable) -> Callable:
    """timm's ``checkpoint_filter_fn`` made to list what does not fit instead of raising on it.

    ConvNeXt's filter reshapes every 2-D tensor to the model's shape, which raises a bare
    ``RuntimeError`` when the checkpoint is of another width.  Then the keys are renamed again
    with nothing reshaped, and each value gets back the shape it had in the file, so that
    :func:`check_state_dict` lists the mis-shaped keys.
    """

    def apply(state_dict, model):
        try:
            return filter_fn(state_dict, _LenientModel(model))
        except RuntimeError:
            shapes = {(v.data_ptr(), v.numel()): v.shape for v in state_dict.values()}
            renamed = filter_fn(state_dict, _LenientModel(model, shapes=False))
            return {k: v.view(shapes.get((v.data_ptr(), v.numel()), v.shape)) for k, v in renamed.items()}

    return apply


def _sail_head_eps(model: nn.Module) -> None:
    """sail-sg's MetaFormer ``MlpHead`` normalises with ``nn.LayerNorm``'s eps 1e-5, timm's with 1e-6:
    weights trained by the authors' code are used with theirs (6e-5 relative on the logits otherwise)."""
    norm = getattr(getattr(getattr(model, "head", None), "fc", None), "norm", None)
    if isinstance(norm, nn.LayerNorm):
        norm.eps = 1e-5


@dataclass(frozen=True)
class Layout:
    """How a checkpoint layout maps onto timm: its key filter, and what its authors' code computes
    differently from timm's module (applied to the model it is loaded into)."""

    filter: Optional[Callable] = None
    adapt: Optional[Callable[[nn.Module], None]] = None


LAYOUTS: dict[str, Layout] = {
    "timm": Layout(),
    "convnext-official": Layout(_timm_filter(convnext.checkpoint_filter_fn)),
    "metaformer-sail": Layout(_timm_filter(metaformer.checkpoint_filter_fn), _sail_head_eps),
    "fastvit-apple": Layout(_timm_filter(fastvit.checkpoint_filter_fn)),
}


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (torch.compile) prefixes."""
    return clean_state_dict(dict(state_dict))


def map_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, layout: str, reference_version: Optional[str] = None
) -> dict[str, torch.Tensor]:
    """Rename a state dict from ``layout`` to the model's timm names and convert reference positions."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    mapped = _strip_wrappers(state_dict)
    if LAYOUTS[layout].filter is not None:
        mapped = dict(LAYOUTS[layout].filter(mapped, model))
    if reference_version is not None:
        mapped = from_reference_state_dict(mapped, reference_version, ndim=2)
    return mapped


# --- checking and loading -------------------------------------------------------------------------


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    shown = "\n".join(f"    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def _model_name(model: nn.Module) -> str:
    """The timm name a model was created under (``pretrained_cfg["architecture"]``), else its class."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"model {name} ({type(model).__name__})" if name else type(model).__name__


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` listing every missing, unexpected and mis-shaped key, and shared
    tensors (positions shared by a stage) that the checkpoint gives different values."""
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    by_tensor: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        by_tensor.setdefault(id(tensor), []).append(key)
    disagree = []
    for keys in by_tensor.values():
        present = [k for k in keys if k in state_dict and tuple(state_dict[k].shape) == tuple(expected[k].shape)]
        first = present[0] if present else None
        for other in present[1:]:
            if not torch.equal(state_dict[first], state_dict[other]):
                disagree.append(f"{first} != {other}")
    if missing or unexpected or shapes or disagree:
        counts = [f"{len(items)} {label}" for items, label in ((missing, "missing"), (unexpected, "unexpected"),
                  (shapes, "mis-shaped"), (disagree, "disagreeing shared")) if items]
        parts = [f"{what} does not fit {_model_name(model)}: {', '.join(counts)} keys "
                 "(after mapping to the model's names):"]
        if missing:
            parts.append(_listing("missing from the checkpoint", missing))
        if unexpected:
            parts.append(_listing("unexpected in the checkpoint", unexpected))
        if shapes:
            parts.append(_listing("shape mismatches", shapes))
        if disagree:
            parts.append(
                _listing("tensors the model shares but the checkpoint gives different values (convert with share_positions=False?)", disagree)
            )
        raise CheckpointError("\n".join(parts))


def _restore_sharing(model: nn.Module) -> None:
    """Re-tie positions a converted model should share but no longer does (after ``to_empty()``)."""
    spec = getattr(model, "dcls_spec", None)
    if spec is None or not spec.share_positions:
        return
    for names in spec.position_groups:
        layers = [model.get_submodule(n) for n in names]
        if any(layer.P is not layers[0].P for layer in layers):
            tie_positions(model)
            return


def load_checkpoint(
    model: nn.Module,
    path: Union[str, Path],
    layout: str = "timm",
    state_keys: Sequence[str] = (),
    reference_version: Optional[str] = None,
    trust: bool = False,
    adapt_state_dict: Optional[Callable[[dict], dict]] = None,
) -> nn.Module:
    """Read ``path``, map it from ``layout`` onto ``model``, check it, and load it strictly.

    ``adapt_state_dict`` changes the mapped state dict before the check (timm's ``pretrained=True``
    adapts the head and stem to ``num_classes`` and ``in_chans`` there).

    A converted model whose shared positions were untied (``to_empty()`` does that) is re-tied first,
    so the loaded model shares them as its ``dcls_spec`` says.  Where the layout's authors compute
    something differently from timm's module (sail-sg's MetaFormer head), the model is set to compute
    it their way.
    """
    what = f"checkpoint {path}"
    state_dict = extract_state_dict(read_checkpoint(path, trust=trust), state_keys, what)
    _restore_sharing(model)
    mapped = map_state_dict(state_dict, model, layout, reference_version)
    if adapt_state_dict is not None:
        mapped = adapt_state_dict(mapped)
    check_state_dict(model, mapped, what)
    model.load_state_dict(mapped, strict=True)
    adapt_to_layout(model, layout)
    return model


def adapt_to_layout(model: nn.Module, layout: str) -> None:
    """Make ``model`` compute what ``layout``'s authors' code computes where timm's differs."""
    if LAYOUTS[layout].adapt is not None:
        LAYOUTS[layout].adapt(model)


def load_pretrained(
    model: nn.Module,
    name: str,
    path: Union[str, Path, None] = None,
    directory: Union[str, Path, None] = None,
    progress: bool = True,
    trust: bool = False,
) -> nn.Module:
    """Load the published weights of ``name`` (one of ``PUBLISHED``) into ``model``; returns ``model``.

    Downloads to the cache on first use, or reads ``path`` (a local copy of the same file).
    """
    spec = published_checkpoint(name)
    file = resolve_checkpoint(name, path, directory, progress)
    return load_checkpoint(model, file, spec.layout, spec.state_keys, spec.reference_version, trust=trust)


__all__ = [
    "CACHE_ENV",
    "LAYOUTS",
    "PUBLISHED",
    "CheckpointError",
    "Layout",
    "PublishedCheckpoint",
    "adapt_to_layout",
    "cache_dir",
    "check_state_dict",
    "download",
    "extract_state_dict",
    "load_checkpoint",
    "load_pretrained",
    "map_state_dict",
    "published_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
]
