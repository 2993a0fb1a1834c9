"""dcls_lib.widgets.frame_explorer: several controls switching precomputed frames through jslink alone."""

from itertools import product

import ipywidgets as w
import pytest
from ipywidgets.widgets.widget_link import Link

from dcls_lib.chapters.widgets import Control, Panel, frame_explorer


def _links():
    return [x for x in w.widgets.widget._instances.values() if isinstance(x, Link)]


def _shown(node, links):
    """The frame a panel shows once every jslink has propagated (what the browser does)."""
    while isinstance(node, w.Stack):
        source = [l.source for l in links if l.target[0] is node and l.target[1] == "selected_index"]
        assert len(source) == 1, "every stack follows exactly one control"
        control, attribute = source[0]
        node = node.children[getattr(control, attribute)]
    assert isinstance(node, w.Image)
    return node.value


def _explorer():
    controls = [Control("image", ["i0", "i1", "i2"]), Control("method", ["plain", "floored"], kind="toggle"),
                Control("threshold", ["0.0", "0.5"], kind="slider", initial=1)]
    left = Panel(["image"], {(i,): b"img%d" % i for i in range(3)})
    # the plain method ignores the threshold: its frames are equal across thresholds
    right = Panel(["image", "method", "threshold"],
                  {(i, m, t): (b"map%d-plain" % i if m == 0 else b"map%d-floor%d" % (i, t))
                   for i, m, t in product(range(3), range(2), range(2))})
    return frame_explorer(controls, [left, right], caption="made here"), left, right


def test_every_combination_of_controls_shows_its_frames():
    box, left, right = _explorer()
    controls = box.controls
    assert isinstance(controls["image"], w.Dropdown) and isinstance(controls["method"], w.ToggleButtons)
    assert isinstance(controls["threshold"], w.SelectionSlider) and controls["threshold"].index == 1
    assert "made here" in box.children[-1].value
    panels = box.children[3].children
    links = _links()
    for i, m, t in product(range(3), range(2), range(2)):
        controls["image"].index, controls["method"].index, controls["threshold"].index = i, m, t
        assert _shown(panels[0], links) == left.frames[(i,)]
        assert _shown(panels[1], links) == right.frames[(i, m, t)]


def test_identical_frames_are_stored_once_and_unused_levels_dropped():
    box, _, right = _explorer()
    per_image = box.children[3].children[1].children  # image level -> method level
    plain, floored = per_image[0].children
    assert isinstance(plain, w.Image), "the threshold level of the plain method should be left out"
    assert isinstance(floored, w.Stack) and len(floored.children) == 2
    images = set()

    def collect(node):
        if isinstance(node, w.Image):
            images.add(id(node))
        for child in getattr(node, "children", ()):
            collect(child)

    collect(box.children[3].children[1])
    assert len(images) == len(set(right.frames.values())) == 9


def test_explorer_refuses_incomplete_or_unknown_frames():
    image = Control("image", ["a", "b"])
    with pytest.raises(ValueError, match="lacks frames for 1 combinations"):
        frame_explorer([image], [Panel(["image"], {(0,): b"x"})])
    with pytest.raises(ValueError, match="unknown controls"):
        frame_explorer([image], [Panel(["model"], {(0,): b"x"})])
    with pytest.raises(ValueError, match="do not exist"):
        frame_explorer([image], [Panel(["image"], {(0,): b"x", (1,): b"y", (2,): b"z"})])
    with pytest.raises(ValueError, match="kind"):
        Control("image", ["a"], kind="knob")
    with pytest.raises(ValueError, match="initial"):
        Control("image", ["a"], initial=1)
    with pytest.raises(TypeError, match="PNG bytes"):
        frame_explorer([image], [Panel(["image"], {(0,): "x", (1,): "y"})])
