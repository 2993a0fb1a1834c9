"""Chapter 5's analyses of Grad-CAM, as rows for its tables: what a channels-last layout does to the
maps, and what the channel mean cancels.  The maps and diagnostics are :mod:`dcls_lib.heatmaps`'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS, METHOD_NAMES, method_label
from ..heatmaps import LayerTensors, cam_diagnostics, channels_last_view, layer_tensors
from ..metrics import alignment_from_correlations, spearman
from ..models import cam_target

LAYOUTS = {"(B, C, H, W)": None, "channels-last, no transform": channels_last_view}


@dataclass
class LayoutComparison:
    """Table rows, and per (layout, explainer) the maps at the human maps' size and their Spearman scores."""

    rows: list[dict]
    maps: dict[tuple[str, str], Tensor]
    scores: dict[tuple[str, str], Tensor]


def layout_comparison(name: str, model: nn.Module, images: Tensor, labels: Tensor, human: Tensor,
                      preprocess: Optional[Callable[[Tensor], Tensor]] = None, threshold: float = DEFAULT_THRESHOLD,
                      batch_size: int = 32) -> LayoutComparison:
    """Both maps of ``model`` from its target layer as it is, and as a Grad-CAM expecting (B, C, H, W)
    sees channels-last activations: one row per layout and explainer."""
    size = tuple(human.shape[-2:])
    rows, maps, scores = [], {}, {}
    for layout, reshape in LAYOUTS.items():
        tensors = layer_tensors(model, images, labels, preprocess=preprocess, batch_size=batch_size,
                                reshape_transform=reshape)
        for explainer in EXPLAINERS:
            m = maps[layout, explainer] = tensors.maps(explainer, threshold, size)
            r = scores[layout, explainer] = spearman(m, human)
            rows.append({"model": name, "layout given to Grad-CAM": layout, "method": method_label(explainer),
                         "map before resizing": " x ".join(map(str, tensors.maps(explainer).shape[1:])),
                         "images": len(images), "constant maps": int(r.isnan().sum()),
                         "alignment (%)": f"{100 * alignment_from_correlations(r):.1f}"})
    return LayoutComparison(rows, maps, scores)


def diagnostics_row(name: str, weights: str, tensors: LayerTensors, human: Tensor,
                    threshold: float = DEFAULT_THRESHOLD) -> dict:
    """One row of chapter 5's cancellation table: ``cam_diagnostics`` averaged over the images, and both maps' alignment."""
    d = cam_diagnostics(tensors)
    size = tuple(human.shape[-2:])
    alignment = {e: alignment_from_correlations(spearman(tensors.maps(e, threshold, size), human)) for e in EXPLAINERS}
    return {"model": name, "weights": weights, "images": len(tensors),
            "layer (C x h x w)": " x ".join(map(str, tensors.activations.shape[1:])),
            "constant Grad-CAM maps (%)": f"{100 * d['gradcam constant'].float().mean():.0f}",
            "Grad-CAM positive cells (%)": f"{100 * d['gradcam positive'].mean():.0f}",
            "Threshold-Grad-CAM positive cells (%)": f"{100 * d['threshold-gradcam positive'].mean():.0f}",
            "cancellation": f"{d['cancellation'].mean():.2f}",
            "Grad-CAM alignment (%)": f"{100 * alignment['gradcam']:.1f}",
            "Threshold-Grad-CAM alignment (%)": f"{100 * alignment['threshold-gradcam']:.1f}"}


def pytorch_gradcam_agreement(model: nn.Module, images: Tensor, labels: Tensor, human: Tensor, ours: Tensor,
                              preprocess: Optional[Callable[[Tensor], Tensor]] = None, batch_size: int = 128) -> dict:
    """pytorch-grad-cam's ``GradCAM`` on the study's target layer against ``ours`` (the study's
    Grad-CAM maps of the same images): how many maps are constant in both, the smallest Spearman
    between the two maps of an image over the others, and both alignment scores."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(model.parameters()).device
    theirs = []
    with GradCAM(model, [cam_target(model).layer]) as cam:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            batch = preprocess(batch) if preprocess is not None else batch
            targets = [ClassifierOutputTarget(int(c)) for c in labels[start:start + batch_size]]
            theirs.append(torch.from_numpy(cam(batch, targets)))
    theirs, ours = torch.cat(theirs), ours.cpu()
    both_constant = (ours.flatten(1).std(1) == 0) & (theirs.flatten(1).std(1) == 0)
    agree = spearman(ours[~both_constant], theirs[~both_constant])
    return {"images": len(ours), "constant in both": int(both_constant.sum()),
            "min Spearman": float(agree.min()) if len(agree) else float("nan"),
            "ours": alignment_from_correlations(spearman(ours, human)),
            "theirs": alignment_from_correlations(spearman(theirs, human))}


def heatmap_rows(maps: Mapping[tuple, Mapping[str, Tensor]], rho: Mapping[tuple, Mapping[str, Tensor]],
                 count: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The rows of :func:`~dcls_lib.chapters.heatmap_plots.plot_heatmap_grid` for the first ``count``
    images: one per model and method, named 'family variant' over the method's name."""
    rows, scores = {}, {}
    for (family, variant), per in maps.items():
        for method in EXPLAINERS:
            name = f"{family} {variant}\n{METHOD_NAMES[method]}"
            rows[name] = per[method][:count].cpu()
            scores[name] = rho[(family, variant)][method][:count].cpu()
    return rows, scores
