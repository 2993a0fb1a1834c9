"""Plotting helpers shared by the book's chapters: kernels, labels that say what produced a figure.

Every computed figure in the book carries a small grey line just below it, written by
``label_figure(fig, run_label(...))``: the device, the run profile, the data, the commit and the date.
"""

from __future__ import annotations

import io
import textwrap
from typing import Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import TwoSlopeNorm
from PIL import Image

from ..tables import table_text

LABEL_STYLE = {"fontsize": 7, "color": "0.35", "ha": "left", "va": "top"}


def label_figure(fig: plt.Figure, label: str) -> plt.Figure:
    """Write ``label`` (what produced the figure) in small grey text just below the figure, wrapped
    to its width.  It lies outside the axes so it never hides a tick label; it is kept by
    ``bbox_inches="tight"``, which Jupyter's inline backend and ``figure_png`` use."""
    if not label:
        raise ValueError("a computed figure needs a label saying what produced it")
    width = max(20, int(fig.get_figwidth() * 72 / (0.6 * LABEL_STYLE["fontsize"])))
    fig.text(0.005, -0.01, "\n".join(textwrap.wrap(label, width)), transform=fig.transFigure, **LABEL_STYLE)
    return fig


def _as_array(kernel) -> np.ndarray:
    if isinstance(kernel, torch.Tensor):
        kernel = kernel.detach().float().cpu().numpy()
    kernel = np.asarray(kernel, dtype=float)
    if kernel.ndim != 2:
        raise ValueError(f"expected a 2-D kernel, got shape {kernel.shape}")
    return kernel


def plot_kernel(
    ax: plt.Axes,
    kernel,
    taps: Optional[torch.Tensor] = None,
    title: Optional[str] = None,
    signed: bool = True,
    vmax: Optional[float] = None,
    cmap: Optional[str] = None,
    grid: bool = True,
) -> matplotlib.image.AxesImage:
    """Show a 2-D kernel cell by cell; ``taps`` (2, n) are DCLS offsets from the centre, drawn as dots.

    Signed kernels use a diverging map centred on zero (``vmax`` fixes its range, e.g. to compare
    frames); unsigned ones (receptive fields) a sequential map.
    """
    k = _as_array(kernel)
    h, w = k.shape
    if signed:
        limit = vmax if vmax is not None else max(float(np.abs(k).max()), 1e-12)
        image = ax.imshow(k, cmap=cmap or "RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), interpolation="nearest")
    else:
        image = ax.imshow(k, cmap=cmap or "magma", vmin=0, vmax=vmax, interpolation="nearest")
    if grid and max(h, w) <= 33:
        ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
        ax.grid(which="minor", color="0.85" if signed else "0.3", linewidth=0.4)
        ax.tick_params(which="minor", length=0)
    ax.set_xticks([0, w // 2, w - 1], [f"{-(w // 2)}", "0", f"{w - 1 - w // 2}"])
    ax.set_yticks([0, h // 2, h - 1], [f"{-(h // 2)}", "0", f"{h - 1 - h // 2}"])
    if taps is not None:
        t = taps.detach().float().cpu().reshape(2, -1).numpy()
        ax.scatter(t[1] + w // 2, t[0] + h // 2, s=14, c="k", marker="o", linewidths=0.6, edgecolors="w")
    if title:
        ax.set_title(title, fontsize=9)
    return image


def figure_png(fig: plt.Figure, dpi: int = 80, colors: Optional[int] = 128, close: bool = False) -> bytes:
    """The figure as PNG bytes, palette-reduced to ``colors`` colours (small enough to embed many);
    ``close`` closes the figure afterwards (a frame drawn only to be embedded)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        if close:
            plt.close(fig)
    if colors is None:
        return buffer.getvalue()
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def grid_of_axes(count: int, columns: int, size: Sequence[float] = (2.6, 2.6)) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure with ``count`` axes laid out in rows of ``columns``; unused axes are hidden."""
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows + 0.4), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_tap_frame(
    version: str,
    size: int,
    column: float,
    target: torch.Tensor,
    landscape: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sigma: Optional[float] = None,
    derivative_limit: Optional[float] = None,
    title: Optional[str] = None,
) -> plt.Figure:
    """One frame of the moving-tap explorer: the kernel of a tap at (0, ``column``), the derivative
    of the kernel with respect to the tap's column, and the loss ||K - target||^2 with its gradient
    along the row (``landscape`` = (columns, losses, gradients), as from ``tap_gradient.loss_landscape``).
    """
    from .tap_gradient import kernel_position_derivative, tap_kernel, tap_loss

    position = (0.0, float(column))
    kernel = tap_kernel(version, size, position, sigma)
    dk = kernel_position_derivative(version, size, position, sigma)[1]
    columns, losses, grads = (t.detach().cpu().numpy() for t in landscape)
    loss_here = float(tap_loss(version, size, position, target, sigma))
    grad_here = float(np.interp(column, columns, grads))

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.1), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    plot_kernel(axes[0], kernel, title=f"kernel K, tap at (0, {column:+.2f})", vmax=1.0)
    target_cells = np.argwhere(target.cpu().numpy() != 0)
    for r, c in target_cells:
        axes[0].add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="tab:green", linewidth=1.5))
    axes[0].plot(column + size // 2, size // 2, marker="x", color="k", markersize=7)
    plot_kernel(axes[1], dk, title="dK / d(column)", vmax=derivative_limit or float(dk.abs().max()) or 1.0)

    ax = axes[2]
    ax.plot(columns, losses, color="0.3", label="loss ||K - T||²")
    ax.plot([column], [loss_here], "o", color="0.1")
    ax.set_xlabel("tap column (offset from centre)")
    ax.set_ylabel("loss", color="0.3")
    twin = ax.twinx()
    twin.plot(columns, grads, color="tab:red", linestyle="--", label="d loss / d column")
    twin.plot([column], [grad_here], "o", color="tab:red")
    twin.axhline(0, color="tab:red", linewidth=0.5, alpha=0.4)
    twin.set_ylabel("gradient", color="tab:red")
    for c in target_cells[:, 1]:
        ax.axvline(c - size // 2, color="tab:green", linewidth=1, alpha=0.7)
    ax.set_title(f"loss {loss_here:.3f}, gradient {grad_here:+.3f}", fontsize=9)
    fig.suptitle(title or version, fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.93, top=0.82, bottom=0.16, wspace=0.35)
    return fig


def plot_receptive_field(ax: plt.Axes, erf, title: Optional[str] = None, radius: Optional[float] = None,
                         floor: float = 1e-4) -> matplotlib.image.AxesImage:
    """Show an effective receptive field on a log colour scale (down to ``floor`` times its peak),
    with the disc of ``radius`` pixels (e.g. the one holding 90% of the mass) drawn around the centre."""
    from matplotlib.colors import LogNorm

    e = _as_array(erf)
    peak = float(e.max())
    image = ax.imshow(np.clip(e, peak * floor, None), cmap="magma", norm=LogNorm(peak * floor, peak),
                      interpolation="nearest")
    h, w = e.shape
    if radius is not None:
        ax.add_patch(plt.Circle((w // 2, h // 2), radius, fill=False, color="tab:cyan", linewidth=1.0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return image


def markdown_table(rows: Sequence[dict], caption: str = ""):
    """Rows of dicts as a Markdown table (rendered as HTML by Jupyter and the book), caption below."""
    from IPython.display import Markdown

    text = table_text(rows)
    return Markdown(f"{text}\n\n<small>{caption}</small>" if caption else text)


def plot_tap_paths(ax: plt.Axes, positions: torch.Tensor, size: int, targets: Optional[torch.Tensor] = None) -> None:
    """Draw how taps moved during training: ``positions`` is ``(steps + 1, 2, taps)`` offsets from the
    centre of a ``size`` x ``size`` kernel (grey x: start, line: path, dot: end); ``targets`` (n, 2)
    are cells to outline in green."""
    paths = positions.detach().cpu().numpy()
    if paths.ndim != 3 or paths.shape[1] != 2:
        raise ValueError(f"positions must be (steps + 1, 2, taps), got {tuple(paths.shape)}")
    c = size // 2
    for tap in range(paths.shape[-1]):
        ax.plot(paths[:, 1, tap] + c, paths[:, 0, tap] + c, "-", color="k", linewidth=0.8)
        ax.plot(paths[0, 1, tap] + c, paths[0, 0, tap] + c, "x", color="0.5", markersize=4)
        ax.plot(paths[-1, 1, tap] + c, paths[-1, 0, tap] + c, "o", color="k", markersize=3)
    for r, col in ([] if targets is None else targets.tolist()):
        ax.add_patch(plt.Rectangle((col + c - 0.5, r + c - 0.5), 1, 1, fill=False, edgecolor="tab:green"))
