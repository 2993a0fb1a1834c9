"""Chapter 7's explorer: the variants' maps side by side for a chosen image, method and threshold.

One function draws a frame, :meth:`HeatmapExplorer.frame`, and serves both ways the explorer runs:

- :meth:`~HeatmapExplorer.static` draws it at build time for a set of test images and thresholds
  and hands the PNGs to :func:`~dcls_lib.chapters.widgets.frame_explorer`, which switches them in
  the browser: the static book needs no kernel.
- :meth:`~HeatmapExplorer.live` calls it from ipywidgets observers: in a live notebook any test
  image, any threshold, or an image the reader loads (a file path or an array) is computed on
  demand.

Every map comes from the target layer's activations and gradients (:func:`~dcls_lib.heatmaps.layer_tensors`),
one forward and backward pass per model and image, from which both methods at any threshold follow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import product
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS, METHOD_NAMES, _check_threshold
from ..heatmaps import LayerTensors, layer_tensors
from ..metrics import spearman
from ..sanity import randomised_copy
from .heatmap_plots import image_frame, overlay_frame, score_text, threshold_labels
from .widgets import Control, Panel, frame_explorer, page_weight_kb

Key = tuple  # (family, variant)


@dataclass
class Explained:
    """One image and what each model's target layer made of it: every map, for both methods and any
    threshold, follows without another pass."""

    image: Tensor  # (3, H, W) in [0, 1]
    human_map: Optional[Tensor]  # (H, W); None for an image without one
    title: str
    tensors: dict[Key, LayerTensors]  # one image each
    classes: dict[Key, int]  # the class each model's map explains

    def map(self, key: Key, method: str, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
        """The map (H, W) of model ``key`` by ``method`` at the image's size."""
        return self.tensors[key].maps(method, threshold, tuple(self.image.shape[-2:]))[0]

    def rho(self, heatmap: Tensor) -> float:
        """Spearman correlation of ``heatmap`` with the human map (NaN without one, or for a constant map)."""
        return float("nan") if self.human_map is None else float(spearman(heatmap[None], self.human_map[None])[0])


def load_image(source, size: int) -> Tensor:
    """An image the reader brings, as a (3, size, size) tensor in [0, 1]: a file path (anything PIL
    reads), an (H, W, 3) array (uint8, or floats in [0, 1]) or a (3, H, W) tensor in [0, 1]."""
    if isinstance(source, (str, os.PathLike)):
        from PIL import Image

        if not os.path.isfile(source):
            raise FileNotFoundError(f"no image file {os.fspath(source)!r}")
        source = np.asarray(Image.open(source).convert("RGB"))
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3), got shape {source.shape}")
        scale = 255.0 if source.dtype == np.uint8 else 1.0
        source = torch.from_numpy(source.astype(np.float32) / scale).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if not isinstance(source, Tensor) or source.dim() != 3 or source.shape[0] != 3:
        raise ValueError(f"an image must be a file path, an (H, W, 3) array or a (3, H, W) tensor, "
                         f"got {getattr(source, 'shape', type(source).__name__)}")
    image = source.detach().float().cpu()
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"image values must lie in [0, 1], got {float(image.min()):.3g} to {float(image.max()):.3g}")
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def one_per_class(test, classes: Optional[int] = None) -> list[int]:
    """The first test image of each class present in ``test`` (in class order), of the first
    ``classes`` classes found when given."""
    first: dict[int, int] = {}
    for index in range(len(test)):
        label = int(test.label_of(index) if hasattr(test, "label_of") else test[index][1])
        first.setdefault(label, index)
    picked = [first[c] for c in sorted(first)]
    return picked if classes is None else picked[:classes]


def method_title(method: str, threshold_text: Optional[str]) -> str:
    """'Grad-CAM' or 'Threshold-Grad-CAM (t = 0.30)', with the threshold printed as the slider prints it."""
    name = METHOD_NAMES[method]
    return name if method == "gradcam" else f"{name} (t = {threshold_text})"


class HeatmapExplorer:
    """The maps of several trained models, ``models[(family, variant)]``, on ``test`` (a dataset of
    (image, label, human map)), drawn over their image, the variants of a family side by side.

    ``preprocess`` turns images in [0, 1] into the models' input; ``class_names`` names the labels.
    """

    def __init__(self, models: Mapping[Key, nn.Module], test, preprocess: Optional[Callable[[Tensor], Tensor]] = None,
                 class_names: Optional[Sequence[str]] = None, batch_size: int = 64):
        if not models:
            raise ValueError("the explorer needs at least one model")
        if any(not isinstance(k, tuple) or len(k) != 2 for k in models):
            raise ValueError(f"models must be keyed by (family, variant), got {list(models)}")
        self.models, self.test, self.preprocess = dict(models), test, preprocess
        self.class_names, self.batch_size = class_names, batch_size
        self.families = list(dict.fromkeys(f for f, _ in self.models))

    def _class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names is not None else f"class {label}"

    def check_index(self, index) -> int:
        """A test image number, or an error that says why it is not one."""
        count = len(self.test)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"an image number must be an int, got {index!r}")
        if not 0 <= index < count:
            raise ValueError(f"image {index} is past the test split ({count} images: 0 to {count - 1})")
        return int(index)

    def explain(self, images: Tensor, labels: Optional[Tensor], human_maps: Optional[Tensor],
                titles: Sequence[str]) -> list[Explained]:
        """Every model's target-layer tensors for ``images`` (N, 3, H, W); each map explains
        ``labels`` or, where there are none, the model's own prediction."""
        per_model, classes = {}, {}
        for key, model in self.models.items():
            device = next(model.parameters()).device
            explained = labels
            if explained is None:
                with torch.no_grad():
                    batch = images.to(device)
                    logits = model(self.preprocess(batch) if self.preprocess is not None else batch)
                explained = logits.argmax(dim=1).cpu()
            per_model[key] = layer_tensors(model, images, explained, preprocess=self.preprocess,
                                           batch_size=self.batch_size)
            classes[key] = explained
        return [Explained(images[i], None if human_maps is None else human_maps[i], titles[i],
                          {k: LayerTensors(t.activations[i:i + 1], t.gradients[i:i + 1]) for k, t in per_model.items()},
                          {k: int(c[i]) for k, c in classes.items()})
                for i in range(len(images))]

    def explain_test(self, indices: Sequence[int]) -> list[Explained]:
        """The test images ``indices``, each map explaining the image's true class."""
        indices = [self.check_index(i) for i in indices]
        if not indices:
            raise ValueError("no test image to explain")
        images, labels, human = zip(*(self.test[i] for i in indices))
        titles = [f"test image {i}: {self._class_name(int(c))}" for i, c in zip(indices, labels)]
        return self.explain(torch.stack(images), torch.as_tensor(labels), torch.stack(human), titles)

    def explain_image(self, source, title: str = "your image") -> Explained:
        """An image the reader loads (see :func:`load_image`), at the test images' size; each map
        explains the class its model predicts."""
        size = self.test[0][0].shape[-1]
        return self.explain(load_image(source, size)[None], None, None, [title])[0]

    def frame(self, explained: Explained, family: str, method: str, threshold: float = DEFAULT_THRESHOLD,
              threshold_text: Optional[str] = None, dpi: int = 72) -> bytes:
        """PNG of ``family``'s variants side by side: each one's ``method`` map over the image, with
        the human map's outline and its Spearman correlation with it (what the study averages)."""
        if method not in EXPLAINERS:
            raise ValueError(f"method must be one of {EXPLAINERS}, got {method!r}")
        threshold = _check_threshold(threshold)
        text = threshold_text or threshold_labels([threshold])[0]
        panels = {}
        for (f, variant) in self.models:
            if f != family:
                continue
            heatmap = explained.map((f, variant), method, threshold)
            note = (score_text(explained.rho(heatmap)) if explained.human_map is not None
                    else f"explains {self._class_name(explained.classes[f, variant])}")
            panels[variant] = (heatmap, f"{variant}\n{note}")
        if not panels:
            raise ValueError(f"no model of family {family!r}; the explorer has {self.families}")
        prefix = f"{family}, " if len(self.families) > 1 else ""
        return overlay_frame(explained.image, explained.human_map, {"": panels},
                             f"{explained.title}: {prefix}{method_title(method, text)}", dpi)

    def static(self, indices: Sequence[int], thresholds: Sequence[float], threshold: float = DEFAULT_THRESHOLD,
               caption: str = ""):
        """The explorer of the static page: controls for the image, the family (where there are several),
        the method and the threshold, switching frames precomputed here; the caption states their weight."""
        thresholds = [_check_threshold(float(t)) for t in thresholds]
        if not thresholds:
            raise ValueError("the explorer needs at least one threshold")
        explained = self.explain_test(indices)
        labels = threshold_labels(thresholds)
        start = min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - threshold))
        controls = [Control("image", [e.title for e in explained])]
        if len(self.families) > 1:
            controls.append(Control("family", self.families))
        controls += [Control("method", [METHOD_NAMES[m] for m in EXPLAINERS], kind="toggle", initial=1),
                     Control("threshold", labels, kind="slider", initial=start)]
        left = Panel(["image"], {(k,): image_frame(e.image, e.human_map, e.title) for k, e in enumerate(explained)})
        frames = {}
        for (k, e), (fi, family) in product(enumerate(explained), enumerate(self.families)):
            family_index = (fi,) if len(self.families) > 1 else ()
            plain = self.frame(e, family, "gradcam")  # Grad-CAM has no threshold: one frame for every position
            for ti, (t, text) in enumerate(zip(thresholds, labels)):
                frames[(k, *family_index, 0, ti)] = plain
                frames[(k, *family_index, 1, ti)] = self.frame(e, family, "threshold-gradcam", t, text)
        right = Panel([c.name for c in controls], frames)
        weight = page_weight_kb({**frames, **{("left", *k): v for k, v in left.frames.items()}})
        note = f"{len(set(frames.values())) + len(explained)} precomputed frames, {weight:.0f} KB in the page."
        return frame_explorer(controls, [left, right], caption=f"{note} {caption}".strip())

    def randomisation_view(self, indices: Sequence[int], threshold: float = DEFAULT_THRESHOLD, seed: int = 0,
                           caption: str = ""):
        """Each variant's map (top row) beside the same map from its randomised copy (every layer
        re-initialised, :func:`dcls_lib.sanity.randomised_copy`), for the chosen image and method.
        Below each randomised map: its Spearman with the trained map, the randomisation test's statistic."""
        randomised = HeatmapExplorer({k: randomised_copy(m, seed=seed) for k, m in self.models.items()}, self.test,
                                     self.preprocess, self.class_names, self.batch_size)
        trained, copies = self.explain_test(indices), randomised.explain_test(indices)
        controls = [Control("image", [e.title for e in trained])]
        if len(self.families) > 1:
            controls.append(Control("family", self.families))
        controls.append(Control("method", [METHOD_NAMES[m] for m in EXPLAINERS], kind="toggle", initial=1))
        frames = {}
        for (k, (e, r)), (fi, family), (mi, method) in product(enumerate(zip(trained, copies)),
                                                               enumerate(self.families), enumerate(EXPLAINERS)):
            rows = {"trained": {}, "randomised": {}}
            for (f, variant) in self.models:
                if f != family:
                    continue
                mine, theirs = e.map((f, variant), method, threshold), r.map((f, variant), method, threshold)
                same = float(spearman(mine[None], theirs[None])[0])
                rows["trained"][variant] = (mine, f"{variant}\n{score_text(e.rho(mine))}")
                rows["randomised"][variant] = (theirs, f"{score_text(e.rho(theirs))}, "
                                                       f"vs trained {score_text(same).removeprefix('ρ = ')}")
            title = f"{e.title}: {method_title(method, threshold_labels([threshold])[0])}"
            frames[(k, *((fi,) if len(self.families) > 1 else ()), mi)] = overlay_frame(e.image, e.human_map, rows, title)
        panel = Panel([c.name for c in controls], frames)
        note = f"{len(set(frames.values()))} precomputed frames, {page_weight_kb(frames):.0f} KB in the page."
        return frame_explorer(controls, [panel], caption=f"{note} {caption}".strip())

    def live(self, index: int = 0, method: str = "threshold-gradcam", threshold: float = DEFAULT_THRESHOLD):
        """The explorer of a live notebook (:class:`LiveExplorer`): every control recomputes its
        frame through :meth:`frame`; nothing is precomputed."""
        return LiveExplorer(self, index, method, threshold)


class LiveExplorer:
    """Controls wired to Python observers: a test image number (any of the split), a file to load,
    the family, the method and a threshold slider in steps of 0.01.  ``show(image)`` explains an
    image given as an array or a tensor.  Displays as its ipywidgets box; errors (an image number
    past the split, a file that is not there) appear in the box as one line."""

    def __init__(self, explorer: HeatmapExplorer, index: int, method: str, threshold: float):
        import ipywidgets as w

        self.explorer = explorer
        style = {"description_width": "initial"}
        self.controls = {
            "image": w.IntText(value=index, description="test image", style=style),
            "file": w.Text(value="", description="or an image file", placeholder="path, then Enter",
                           continuous_update=False, style=style),
            "family": w.Dropdown(options=explorer.families, description="family", style=style),
            "method": w.ToggleButtons(options=[(METHOD_NAMES[m], m) for m in EXPLAINERS], value=method,
                                      description="method", style={**style, "button_width": "auto"}),
            "threshold": w.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.01, readout_format=".2f",
                                       description="threshold", continuous_update=False, style=style),
        }
        self.message = w.HTML()
        self.left, self.right = w.Image(format="png"), w.Image(format="png")
        shown = [c for name, c in self.controls.items() if name != "family" or len(explorer.families) > 1]
        self.box = w.VBox([*shown, self.message, w.HBox([self.left, self.right],
                                                        layout=w.Layout(flex_flow="row wrap"))])
        self.explained: Optional[Explained] = None
        self.controls["image"].observe(lambda change: self._pick(change["new"]), names="value")
        self.controls["file"].observe(lambda change: change["new"] and self.show(change["new"]), names="value")
        for name in ("family", "method", "threshold"):
            self.controls[name].observe(lambda change: self._redraw(), names="value")
        self._pick(index)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)

    def _set(self, explained: Explained) -> None:
        self.explained, self.message.value = explained, ""
        self.left.value = image_frame(explained.image, explained.human_map, explained.title)
        self._redraw()

    def _fail(self, error: Exception) -> None:
        self.message.value = f"<span style='color:#b00'>{type(error).__name__}: {error}</span>"

    def _pick(self, index) -> None:
        try:
            self._set(self.explorer.explain_test([index])[0])
        except ValueError as error:
            self._fail(error)

    def _redraw(self) -> None:
        if self.explained is not None:
            c = self.controls
            t = c["threshold"].value
            self.right.value = self.explorer.frame(self.explained, c["family"].value, c["method"].value, t,
                                                   f"{t:.2f}")  # as the slider's readout prints it

    def show(self, image, title: str = "your image") -> None:
        """Explain ``image`` (a file path, an (H, W, 3) array or a (3, H, W) tensor in [0, 1]) with every model."""
        try:
            self._set(self.explorer.explain_image(image, title))
        except (ValueError, FileNotFoundError, OSError) as error:
            self._fail(error)
