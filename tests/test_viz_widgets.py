"""Plot helpers of the chapters."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dcls_lib.chapters.tap_gradient import loss_landscape  # noqa: E402
from dcls_lib.chapters.viz import (  # noqa: E402
    figure_png,
    grid_of_axes,
    label_figure,
    markdown_table,
    plot_kernel,
    plot_receptive_field,
    plot_tap_frame,
    plot_tap_paths,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_label_figure_writes_the_label():
    fig, ax = plt.subplots()
    label_figure(fig, "Computed on CPU, profile smoke")
    assert any(t.get_text() == "Computed on CPU, profile smoke" for t in fig.texts)
    with pytest.raises(ValueError, match="label"):
        label_figure(fig, "")
    plt.close(fig)


def test_plot_kernel_and_png():
    fig, axes = grid_of_axes(3, 2)
    assert len(axes) == 3 and sum(ax.get_visible() for ax in fig.axes) == 3
    image = plot_kernel(axes[0], torch.randn(7, 7), taps=torch.tensor([[0.0, 1.5], [-2.0, 3.0]]), title="k")
    assert image.get_array().shape == (7, 7)
    assert len(axes[0].collections) == 1  # the tap markers
    plot_kernel(axes[1], torch.rand(5, 5), signed=False)
    with pytest.raises(ValueError, match="2-D"):
        plot_kernel(axes[2], torch.zeros(2, 3, 3))
    png = figure_png(fig, dpi=40)
    assert png.startswith(PNG_MAGIC)
    assert len(figure_png(fig, dpi=40, colors=None)) > len(png)  # the palette makes it smaller
    plt.close(fig)


def test_plot_tap_frame_draws_three_panels():
    target = torch.zeros(9, 9, dtype=torch.float64)
    target[4, 6] = 1.0
    columns = torch.linspace(-3, 3, 13, dtype=torch.float64)
    losses, grads = loss_landscape("v1", 9, columns, target)
    fig = plot_tap_frame("v1", 9, 1.5, target, (columns, losses, grads))
    assert len(fig.axes) == 4  # kernel, derivative, loss and its twin gradient axis
    assert "loss 0.500" in fig.axes[2].get_title()  # half the tap on the target cell: 0.5^2 + 0.5^2
    plt.close(fig)


def test_label_is_wrapped_to_the_figure_width():
    fig, _ = plt.subplots(figsize=(3, 2))
    label_figure(fig, "word " * 60)
    (text,) = fig.texts
    lines = text.get_text().split("\n")
    assert len(lines) > 1 and max(len(line) for line in lines) <= 3 * 72 / (0.6 * 7)
    plt.close(fig)


def test_markdown_table_escapes_pipes():
    table = markdown_table([{"a": "s = |SIG| + 0.27", "b": 1}, {"a": "x", "b": 2}], caption="made here")
    lines = table.data.split("\n")
    assert lines[0] == "| a | b |"
    assert lines[2] == "| s = \\|SIG\\| + 0.27 | 1 |"
    assert "made here" in lines[-1]
    with pytest.raises(ValueError, match="columns"):
        markdown_table([{"a": 1}, {"b": 2}])


def test_plot_receptive_field_draws_the_radius():
    fig, ax = plt.subplots()
    erf = torch.zeros(9, 9)
    erf[4, 4], erf[4, 6] = 1.0, 0.5
    image = plot_receptive_field(ax, erf, title="erf", radius=2.0)
    assert image.norm.vmin == pytest.approx(1e-4) and image.norm.vmax == 1.0  # log scale down to 1e-4 of the peak
    assert len(ax.patches) == 1 and ax.patches[0].get_radius() == 2.0
    plt.close(fig)


def test_plot_tap_paths():
    fig, ax = plt.subplots()
    paths = torch.stack([torch.zeros(2, 3), torch.ones(2, 3), 2 * torch.ones(2, 3)])  # 2 steps, 3 taps
    plot_tap_paths(ax, paths, 7, targets=torch.tensor([[2, 2]]))
    assert len(ax.lines) == 3 * 3 and len(ax.patches) == 1
    end = ax.lines[2].get_xydata()[0]
    assert tuple(end) == (3 + 2, 3 + 2)  # the last position, shifted to grid coordinates
    with pytest.raises(ValueError, match="steps"):
        plot_tap_paths(ax, torch.zeros(3, 3), 7)
    plt.close(fig)
