"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains a model must change when the model's learned weights are destroyed.  The test
re-initialises the model's layers from the top (the head) down and correlates each image's map
from the randomised model with its map from the trained one (Spearman over all pixels, at the
image size, as the alignment score is computed):

- ``cascading``: step k randomises the k top layers together; a faithful map decorrelates early
  and stays decorrelated.
- ``independent``: one layer at a time, every other layer trained; shows which layers the map
  depends on.

Which "layers": the parametrised blocks in the model's order (:func:`randomisation_layers`):
timm's residual blocks (``stages.i.blocks.j``, ResNet's ``layerN.j``), each stage's other parts
(``stages.i.downsample``), and every other top-level child with parameters (the stem, ``final_conv``,
the head).  Randomising re-initialises every submodule of a layer with its own
``reset_parameters`` (DCLS layers have one: weights as ``nn.Conv``, positions N(0, 0.5); batch norms
also reset their running statistics), on a deep copy, under a seed per layer, so a layer gets the
same weights in both modes.  Parameters whose module has no ``reset_parameters`` (timm's layer
scales, owned by the block itself) keep their trained values and are counted in each row.  A
parameter shared with layers outside the one randomised (DCLS positions, shared per stage) is
re-initialised with it, and so changes for those layers too; rows count such parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS, StudyCAM, _check_threshold, method_label
from ..heatmaps import LayerTensors, layer_tensors
from ..metrics import spearman
from ..tables import table_text
from ..validation import check_positive_int
from .replay import recording, replayable, replaying
from .spread import DEFAULT_RESAMPLES, spread_text, summarise

MODES = ("cascading", "independent")

MapFunction = Callable[[LayerTensors, Tensor, slice], Tensor]
"""``fn(tensors, images, index) -> maps (n, H, W)``: a map from the target layer's activations and
gradients (:class:`~dcls_lib.heatmaps.LayerTensors`) for a batch of images (n, 3, H, W) in [0, 1],
on the model's device; ``index`` says which of the caller's images the batch holds."""

# A layer is the module path cut after a timm block index, after a stage's part, or at the top level.
_LAYER = re.compile(r"^(stages\.\d+\.blocks\.\d+|layer\d+\.\d+|stages\.\d+\.[^.]+|[^.]+)(?=\.|$)")


def randomisation_layers(model: nn.Module) -> list[str]:
    """The layers the test randomises, named by module path, top (head) to bottom (stem).

    Every module that owns parameters is assigned to its block (see the module docstring); the
    blocks come in the reverse of the order the model defines them.
    """
    owners = [name for name, module in model.named_modules() if next(module.parameters(recurse=False), None) is not None]
    if "" in owners:
        raise ValueError("the model owns parameters itself (not in a submodule): pass layers= explicitly")
    layers = list(dict.fromkeys(_LAYER.match(name).group(1) for name in owners))
    if not layers:
        raise ValueError("the model has no parameters to randomise")
    return layers[::-1]


def _check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str) or not layers:
        raise ValueError("layers must be a non-empty list of module names")
    names = dict(model.named_modules())
    for name in layers:
        if name not in names or name == "":
            raise ValueError(f"layers: {name!r} is not a submodule of the model")
        if next(names[name].parameters(), None) is None:
            raise ValueError(f"layers: {name!r} has no parameters to randomise")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has repeated names: {list(layers)}")
    return list(layers)


@dataclass(frozen=True)
class ParameterCounts:
    """What re-initialising one layer touches, in parameter elements (shared tensors counted once)."""

    reset: int  # re-drawn by a reset_parameters
    kept: int  # owned by a module without reset_parameters: trained values kept
    shared: int  # re-drawn, and also used by modules outside the layer


def parameter_counts(model: nn.Module, layer: str) -> ParameterCounts:
    """How many of ``layer``'s parameters a reset re-draws, keeps, and shares with other layers."""
    root = model.get_submodule(layer)
    inside = {id(m) for m in root.modules()}
    outside = {id(p) for m in model.modules() if id(m) not in inside for p in m.parameters(recurse=False)}
    reset, kept = {}, {}
    for module in root.modules():
        target = reset if hasattr(module, "reset_parameters") else kept
        for p in module.parameters(recurse=False):
            target[id(p)] = p.numel()
    kept = {k: n for k, n in kept.items() if k not in reset}
    shared = sum(n for k, n in reset.items() if k in outside)
    return ParameterCounts(sum(reset.values()), sum(kept.values()), shared)


def _layer_seed(seed: int, position: int) -> int:
    return seed * 100_003 + position


@torch.no_grad()
def randomise_(model: nn.Module, layers: Sequence[str], seed: int = 0, positions: Optional[Sequence[int]] = None) -> nn.Module:
    """Re-initialise ``layers`` of ``model`` in place with their modules' ``reset_parameters``; returns it.

    Layer ``layers[i]`` is seeded by ``(seed, positions[i])`` (default ``i``), so the same layer gets
    the same weights whichever other layers are randomised with it.  The global RNG is left as it was.
    """
    layers = _check_layers(model, layers)
    positions = range(len(layers)) if positions is None else positions
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        for name, position in zip(layers, positions):
            torch.manual_seed(_layer_seed(seed, position))
            for module in model.get_submodule(name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return model


def randomised_copy(model: nn.Module, layers: Optional[Sequence[str]] = None, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with ``layers`` (default: all of :func:`randomisation_layers`) re-initialised,
    each seeded by its place in :func:`randomisation_layers`, as the test's cascading steps are."""
    order = randomisation_layers(model)
    layers = order if layers is None else _check_layers(model, layers)
    positions = [order.index(name) if name in order else len(order) + i for i, name in enumerate(layers)]
    return randomise_(copy.deepcopy(model), layers, seed, positions)


def study_map(explainer: str, threshold: float = DEFAULT_THRESHOLD) -> MapFunction:
    """The study's ``explainer`` map ("gradcam" or "threshold-gradcam") as a :data:`MapFunction`."""
    if explainer not in EXPLAINERS:
        raise ValueError(f"explainer must be one of {EXPLAINERS}, got {explainer!r}")
    threshold = _check_threshold(threshold)
    return lambda tensors, images, index: tensors.maps(explainer, threshold, tuple(images.shape[-2:]))


def map_functions(
    explainers: Union[Sequence[str], Mapping[str, MapFunction]], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, MapFunction]:
    """Names of the study's maps, or a mapping name -> :data:`MapFunction`, as one mapping."""
    if isinstance(explainers, Mapping):
        if not explainers or not all(callable(f) for f in explainers.values()):
            raise ValueError("explainers must map names to functions (tensors, images, size) -> maps")
        return dict(explainers)
    if isinstance(explainers, str) or not explainers:
        raise ValueError(f"explainers must be a non-empty list of names from {EXPLAINERS} or a mapping")
    return {name: study_map(name, threshold) for name in explainers}


def explainer_label(name: str, threshold: float = DEFAULT_THRESHOLD) -> str:
    """How tables name a map: the study's methods by :func:`~dcls_lib.cam.method_label`, others as given."""
    return method_label(name, threshold) if name in EXPLAINERS else name


class MapSource:
    """The maps of one model for fixed images and labels (``source(model) -> {name: maps}``), computed
    through :func:`~dcls_lib.heatmaps.layer_tensors`: one forward and a head-only backward per batch."""

    def __init__(self, target_name: str, images: Tensor, labels: Tensor, functions: Mapping[str, MapFunction], *,
                 preprocess=None, reshape_transform=None, batch_size: int = 64, device=None):
        self.target_name, self.images, self.labels, self.functions = target_name, images, labels, functions
        self.preprocess, self.reshape_transform, self.batch_size, self.device = preprocess, reshape_transform, batch_size, device

    def __call__(self, model: nn.Module) -> dict[str, Tensor]:
        device = torch.device(self.device) if self.device is not None else next(model.parameters()).device
        tensors = layer_tensors(model, self.images, self.labels, preprocess=self.preprocess,
                                target_layer=model.get_submodule(self.target_name),
                                reshape_transform=self.reshape_transform, batch_size=self.batch_size, device=device)
        tensors = LayerTensors(tensors.activations.to(device), tensors.gradients.to(device))
        images = self.images.to(device).float()
        return {name: fn(tensors, images, slice(0, len(images))) for name, fn in self.functions.items()}


@dataclass(frozen=True)
class RandomisationSettings:
    """How the randomisation test runs, apart from the maps it tests: one object that
    :func:`parameter_randomisation` takes and :func:`~dcls_lib.sanity.report.sanity_report` passes on.

    ``layers``: module names, top first (default :func:`randomisation_layers`).  ``preprocess`` turns
    images into the model's input.  ``constant`` decides what a pair with a constant map counts for
    in the mean (:mod:`dcls_lib.sanity.spread`); each row also counts such pairs.  ``seed`` seeds
    the re-initialised layers and the bootstrap.
    """

    threshold: float = DEFAULT_THRESHOLD
    modes: Sequence[str] = MODES
    layers: Optional[Sequence[str]] = None
    preprocess: Optional[Callable[[Tensor], Tensor]] = None
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None
    constant: str = "zero"
    seed: int = 0
    resamples: int = DEFAULT_RESAMPLES
    batch_size: int = 64
    device: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.modes, str) or not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"modes must be a non-empty list from {MODES}, got {self.modes!r}")
        check_positive_int(batch_size=self.batch_size)

    @classmethod
    def of(cls, settings: Optional["RandomisationSettings"] = None, **options) -> "RandomisationSettings":
        """``settings`` (default: the defaults) with the fields named in ``options`` replaced."""
        return dataclasses.replace(settings if settings is not None else cls(), **options)

    def model_input(self, images: Tensor) -> Tensor:
        """Images as the model takes them: through ``preprocess`` where there is one."""
        return self.preprocess(images) if self.preprocess is not None else images

    def map_source(self, model: nn.Module, target_layer: nn.Module, images: Tensor, labels: Tensor,
                   functions: Mapping[str, MapFunction]) -> MapSource:
        """A :class:`MapSource` of ``functions`` at ``target_layer``, batched and placed as these settings say."""
        return MapSource(_module_name(model, target_layer), images, labels, functions, preprocess=self.preprocess,
                         reshape_transform=self.reshape_transform, batch_size=self.batch_size, device=self.device)


@dataclass
class RandomisationResult:
    """Per-image Spearman correlations between trained and randomised maps, and their summary rows.

    ``correlations[(mode, layer, explainer)]``: (N,) float64, NaN where either map is constant.
    ``rows``: one dict per (mode, step, explainer), top layer first.
    """

    correlations: dict[tuple[str, str, str], Tensor]
    rows: list[dict]
    layers: list[str]
    threshold: float = DEFAULT_THRESHOLD
    constant: str = "zero"
    counts: dict[str, ParameterCounts] = field(default_factory=dict)

    def table(self, mode: Optional[str] = None) -> str:
        """A Markdown table: mean ± std [95% bootstrap interval] of Spearman per layer (and mode)."""
        rows = [r for r in self.rows if mode is None or r["mode"] == mode]
        if not rows:
            raise ValueError(f"no rows for mode {mode!r}; the result has {sorted({r['mode'] for r in self.rows})}")
        return table_text([
            {"mode": r["mode"], "step": r["step"], "layer": r["layer"],
             "map": explainer_label(r["explainer"], self.threshold), "Spearman (trained, randomised)": spread_text(r),
             "constant pairs": r["undefined"], "params kept": r["params kept"]}
            for r in rows
        ])


def _check_images(images: Tensor, labels) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, 3, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() != images.shape[0]:
        raise ValueError(f"labels must have one entry per image: got {labels.numel()} for {images.shape[0]} images")
    return labels


def _module_name(model: nn.Module, target_layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target_layer:
            return name
    raise ValueError("target_layer is not a submodule of model")


def parameter_randomisation(
    model: nn.Module,
    target_layer: nn.Module,
    images: Tensor,
    labels,
    *,
    explainers: Union[Sequence[str], Mapping[str, MapFunction]] = EXPLAINERS,
    settings: Optional[RandomisationSettings] = None,
    **options,
) -> RandomisationResult:
    """The randomisation test of ``model``'s maps at ``target_layer`` on ``images`` (N, 3, H, W) in [0, 1].

    ``labels``: the class explained per image.  How it runs: ``settings`` (a
    :class:`RandomisationSettings`), with any of its fields given as keywords (``layers=``,
    ``preprocess=``, ``batch_size=`` ...) taking their place.

    Cost.  Batch by batch: the trained model's maps, then, for every step, the randomised weights
    are loaded into one working copy (each layer's re-initialised state is drawn once), and the
    forward pass replays the trained outputs of everything below the randomised layers
    (:mod:`dcls_lib.sanity.replay`) instead of recomputing them: only the randomised part and what
    follows it run, then a backward through the head.  Each step's maps are correlated with the
    trained ones in one batched Spearman call.  ``model`` itself is never modified.
    """
    settings = RandomisationSettings.of(settings, **options)
    labels = _check_images(images, labels)
    functions = map_functions(explainers, settings.threshold)
    order = randomisation_layers(model) if settings.layers is None else _check_layers(model, settings.layers)
    target_name = _module_name(model, target_layer)
    counts = {name: parameter_counts(model, name) for name in order}
    work = copy.deepcopy(model).eval()
    device = torch.device(settings.device) if settings.device is not None else next(work.parameters()).device
    work.to(device)
    modules = {name: work.get_submodule(name) for name in order}
    trained_states, random_states = _layer_states(work, order, settings.seed)
    glue = _glue(work, order)
    parameters = {name: {id(p) for p in module.parameters()} for name, module in {**modules, **glue}.items()}
    steps = [("cascading", k, order[:k + 1]) for k in range(len(order)) if "cascading" in settings.modes]
    steps += [("independent", k, [order[k]]) for k in range(len(order)) if "independent" in settings.modes]
    cam = StudyCAM(work, work.get_submodule(target_name), settings.reshape_transform)
    watched = {**modules, **glue, target_name: work.get_submodule(target_name)}
    per_batch: dict[tuple[str, str, str], list[Tensor]] = {}

    def maps_of(batch: Tensor, labels_batch: Tensor, index: slice) -> dict[str, Tensor]:
        tensors = LayerTensors(*cam.layer_tensors(settings.model_input(batch), labels_batch))
        return {name: fn(tensors, batch, index) for name, fn in functions.items()}

    for start in range(0, images.shape[0], settings.batch_size):
        index = slice(start, start + settings.batch_size)
        batch, labels_batch = images[index].to(device).float(), labels[index].to(device)
        with recording(watched) as record:
            trained = maps_of(batch, labels_batch, index)
        loaded: list[str] = []
        for mode, k, changed in steps:
            _load(modules, random_states, [n for n in changed if n not in loaded])
            loaded = list(changed)
            changed_parameters = set().union(*(parameters[n] for n in changed))
            skip = replayable(record, [*order, *glue], changed, target_name, changed_parameters, parameters)
            with replaying({n: watched[n] for n in skip}, record):
                maps = maps_of(batch, labels_batch, index)
            for explainer, reference in trained.items():
                per_batch.setdefault((mode, order[k], explainer), []).append(spearman(reference, maps[explainer]).cpu())
            if mode == "independent" or k == len(order) - 1:
                _load(modules, trained_states, loaded)
                loaded = []
    correlations, rows = {}, []
    for mode, k, _ in steps:
        name = order[k]
        for explainer in functions:
            rho = correlations[mode, name, explainer] = torch.cat(per_batch[mode, name, explainer])
            rows.append({"mode": mode, "step": k + 1, "layer": name, "explainer": explainer,
                         **summarise(rho, constant=settings.constant, resamples=settings.resamples, seed=settings.seed),
                         "params reset": counts[name].reset, "params kept": counts[name].kept,
                         "params shared": counts[name].shared})
    return RandomisationResult(correlations, rows, order, float(settings.threshold), settings.constant, counts)


def _glue(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """The parameter-free modules between the layers (ResNet's stem activation and max pooling):
    neither inside a layer nor holding one, so that replaying can skip them too."""
    def related(name: str) -> bool:
        return any(name == layer or name.startswith(layer + ".") or layer.startswith(name + ".") for layer in layers)

    return {name: module for name, module in model.named_modules()
            if name and not related(name) and next(module.parameters(), None) is None}


def _layer_states(model: nn.Module, layers: Sequence[str], seed: int) -> tuple[dict, dict]:
    """Each layer's trained state and its re-initialised state (seeded by its position), as copies;
    ``model`` is left trained."""
    trained, randomised = {}, {}
    for position, name in enumerate(layers):
        module = model.get_submodule(name)
        trained[name] = {k: v.clone() for k, v in module.state_dict().items()}
        randomise_(model, [name], seed, [position])
        randomised[name] = {k: v.clone() for k, v in module.state_dict().items()}
        module.load_state_dict(trained[name])
    return trained, randomised


def _load(modules: Mapping[str, nn.Module], states: Mapping[str, dict], names: Sequence[str]) -> None:
    for name in names:
        modules[name].load_state_dict(states[name])
