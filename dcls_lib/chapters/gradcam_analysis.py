"""Chapter 5's analyses of Grad-CAM, as rows for its tables: what a channels-last layout does to the
maps, and what the channel mean cancels.  The maps and diagnostics are :mod:`dcls_lib.heatmaps`'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor, nn

from ..cam import DEFAULT_THRESHOLD, EXPLAINERS
from ..heatmaps import LayerTensors, cam_diagnostics, channels_last_view, layer_tensors
from ..metrics import alignment_from_correlations, spearman
from .heatmap_plots import method_label

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
