"""Widgets that keep working in the book's static HTML, where no Python kernel runs.

A static page stores only the widgets' state, so a slider wired to a Python callback would show its
last picture and never change.  ``frame_explorer`` instead precomputes one image per combination of
its controls' options (dropdowns, toggle buttons, sliders), and links the controls to the images in
the browser (``jslink``): moving a slider in the static book flips between real, computed frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Mapping, Optional, Sequence

CONTROL_KINDS = ("dropdown", "toggle", "slider")


@dataclass(frozen=True)
class Control:
    """One control of :func:`frame_explorer`: a ``name`` (its label) and its ``options`` (labels),
    shown as a ``dropdown``, ``toggle`` buttons or a ``slider``."""

    name: str
    options: Sequence[str]
    kind: str = "dropdown"
    initial: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CONTROL_KINDS:
            raise ValueError(f"control {self.name!r}: kind must be one of {CONTROL_KINDS}, got {self.kind!r}")
        if not self.options:
            raise ValueError(f"control {self.name!r} has no options")
        if not 0 <= self.initial < len(self.options):
            raise ValueError(f"control {self.name!r}: initial must index its {len(self.options)} options, got {self.initial}")


@dataclass(frozen=True)
class Panel:
    """One picture of :func:`frame_explorer`: it depends on the controls named in ``controls``, and
    ``frames[(i, j, ...)]`` is its PNG when those controls show options i, j, ... (every combination)."""

    controls: Sequence[str]
    frames: Mapping[tuple, bytes]


def page_weight_kb(frames: Mapping[tuple, bytes]) -> float:
    """What the distinct frames add to a page, in KB: each is stored once, base64-encoded."""
    return sum(4 * -(-len(png) // 3) for png in set(frames.values())) / 1024


def frame_explorer(controls: Sequence[Control], panels: Sequence[Panel], caption: Optional[str] = None):
    """Several controls that switch precomputed PNG frames in the browser, in Jupyter and in the
    static book alike (no kernel needed).

    Each panel is a tree of ``Stack`` widgets, one level per control it depends on, whose
    ``selected_index`` follows that control through ``jslink``: choosing an option shows the frame
    for the current combination.  Identical frames are stored once, and a level whose frames do not
    differ (e.g. a threshold that a method ignores) is left out.  Returns an ipywidgets ``VBox``; its
    ``controls`` attribute maps each name to its widget.
    """
    import ipywidgets as w

    if not controls or not panels:
        raise ValueError("frame_explorer needs at least one control and one panel")
    by_name = {c.name: c for c in controls}
    if len(by_name) != len(controls):
        raise ValueError(f"control names must be unique, got {[c.name for c in controls]}")
    for k, panel in enumerate(panels):
        unknown = [n for n in panel.controls if n not in by_name]
        if unknown:
            raise ValueError(f"panel {k} depends on unknown controls {unknown}; controls are {list(by_name)}")
        expected = set(product(*(range(len(by_name[n].options)) for n in panel.controls)))
        missing = sorted(expected - set(panel.frames))
        if missing:
            raise ValueError(f"panel {k} lacks frames for {len(missing)} combinations, e.g. {missing[0]}")
        extra = sorted(set(panel.frames) - expected)
        if extra:
            raise ValueError(f"panel {k} has frames for combinations that do not exist, e.g. {extra[0]}")

    style = {"description_width": "initial"}
    widgets = {}
    for c in controls:
        options = [(label, i) for i, label in enumerate(c.options)]
        if c.kind == "dropdown":
            widgets[c.name] = w.Dropdown(options=options, index=c.initial, description=c.name, style=style)
        elif c.kind == "toggle":
            widgets[c.name] = w.ToggleButtons(options=options, index=c.initial, description=c.name,
                                              style={**style, "button_width": "auto"})
        else:
            widgets[c.name] = w.SelectionSlider(options=options, index=c.initial, description=c.name,
                                                continuous_update=True, style=style, layout=w.Layout(width="50%"))
    images: dict[bytes, object] = {}

    def image(png: bytes):
        if not isinstance(png, (bytes, bytearray)):
            raise TypeError(f"frames must be PNG bytes, got {type(png).__name__}")
        if png not in images:
            images[png] = w.Image(value=bytes(png), format="png", layout=w.Layout(max_width="100%"))
        return images[png]

    def tree(names: Sequence[str], frames: Mapping[tuple, bytes], prefix: tuple):
        if len(prefix) == len(names):
            return image(frames[prefix])
        control = widgets[names[len(prefix)]]
        children = [tree(names, frames, prefix + (i,)) for i in range(len(control.options))]
        if all(child is children[0] for child in children):
            return children[0]
        stack = w.Stack(children, selected_index=control.index)
        w.jslink((control, "index"), (stack, "selected_index"))
        return stack

    shown = w.HBox([tree(list(p.controls), p.frames, ()) for p in panels],
                   layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
    children = [*widgets.values(), shown]
    if caption:
        children.append(w.HTML(f"<small style='color:#555'>{caption}</small>"))
    box = w.VBox(children)
    box.controls = widgets
    return box
