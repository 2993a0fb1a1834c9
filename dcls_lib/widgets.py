"""Widgets that keep working in the book's static HTML, where no Python kernel runs.

A static page stores only the widgets' state, so a slider wired to a Python callback would show its
last picture and never change.  ``frame_player`` instead precomputes one image per slider position
(and per option), and links the controls to the images in the browser (``jslink``): moving the
slider in the static book flips between real, computed frames.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence


def frame_player(
    frames: Mapping[str, Sequence[bytes]],
    values: Sequence[str],
    description: str = "position",
    option_description: str = "",
    initial: int = 0,
    caption: Optional[str] = None,
):
    """Controls that show precomputed PNG ``frames``: a slider over ``values`` and, when ``frames``
    holds several series, toggle buttons choosing the series (e.g. an interpolation).

    ``frames[name][i]`` is the PNG for ``values[i]`` in series ``name``.  Returns an ipywidgets box.
    """
    import ipywidgets as w

    if not frames:
        raise ValueError("frames is empty: give at least one series of PNG images")
    if not values:
        raise ValueError("values is empty: the slider needs at least one position")
    for name, series in frames.items():
        if len(series) != len(values):
            raise ValueError(f"series {name!r} has {len(series)} frames but there are {len(values)} slider values")
    if not 0 <= initial < len(values):
        raise ValueError(f"initial must index values (0..{len(values) - 1}), got {initial}")

    slider = w.SelectionSlider(
        options=[(str(v), i) for i, v in enumerate(values)],
        index=initial,
        description=description,
        continuous_update=True,
        style={"description_width": "initial"},
        layout=w.Layout(width="60%"),
    )
    stacks = []
    for series in frames.values():
        images = [w.Image(value=png, format="png", layout=w.Layout(max_width="100%")) for png in series]
        stack = w.Stack(images, selected_index=initial)
        w.jslink((slider, "index"), (stack, "selected_index"))
        stacks.append(stack)
    children = []
    if len(stacks) == 1:
        shown = stacks[0]
    else:
        choice = w.ToggleButtons(
            options=[(name, i) for i, name in enumerate(frames)],
            description=option_description,
            style={"description_width": "initial", "button_width": "auto"},
        )
        shown = w.Stack(stacks, selected_index=0)
        w.jslink((choice, "index"), (shown, "selected_index"))
        children.append(choice)
    children += [slider, shown]
    if caption:
        children.append(w.HTML(f"<small style='color:#555'>{caption}</small>"))
    return w.VBox(children)
