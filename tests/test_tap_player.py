"""Chapter 2's tap player: every interpolation, a σ control, frames shared where σ has no effect."""

import ipywidgets as w
import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from dcls_lib.chapters.tap_player import (  # noqa: E402
    INTERPOLATIONS,
    TapScene,
    frame_title,
    page_weight_kb,
    tap_frames,
    tap_player,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE = 5
POSITIONS = [-0.5, 1.0]
SIGMAS = [0.23, 0.73]


@pytest.fixture(scope="module")
def setting():
    target = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    target[SIZE // 2, SIZE // 2 + 1] = 1.0
    columns = torch.linspace(-2, 2, 9, dtype=torch.float64)
    return target, columns


@pytest.fixture(scope="module")
def frames(setting):
    target, columns = setting
    return tap_frames(TapScene(SIZE, target, columns, POSITIONS, "made here", dpi=20), SIGMAS)


def test_the_player_offers_every_interpolation_the_chapter_explains():
    assert set(INTERPOLATIONS.values()) == {"v1", "max", "gauss", "v0"}


def test_frames_cover_every_combination(frames):
    expected = {(i, j, k) for i in range(len(INTERPOLATIONS)) for j in range(len(POSITIONS))
                for k in range(len(SIGMAS))}
    assert set(frames) == expected
    assert all(png.startswith(PNG_MAGIC) for png in frames.values())


def test_sigma_moves_the_widths_only(frames):
    names = list(INTERPOLATIONS.values())
    for i, version in enumerate(names):
        for j in range(len(POSITIONS)):
            same = frames[i, j, 0] == frames[i, j, 1]
            assert same == (version in ("v1", "v0")), f"{version}: σ {'should not' if same else 'should'} matter"
    # another position, another frame
    assert frames[names.index("gauss"), 0, 0] != frames[names.index("gauss"), 1, 0]
    # the published v0 takes the derivative from the right on a whole column, where v1 gets 0
    assert frames[names.index("v0"), 1, 0] != frames[names.index("v1"), 1, 0]


def test_frame_titles_state_the_width():
    assert frame_title("gauss", 0.23) == "gauss: Gaussian, σ = 0.23, width s = 0.5"
    assert frame_title("max", 0.5) == "max: triangle, σ = 0.5, width s = 1.5"
    assert "no width" in frame_title("v1", None)


def test_page_weight_counts_each_distinct_frame_once_in_base64():
    frames = {(0,): b"abc", (1,): b"abc", (2,): b"abcd"}
    assert page_weight_kb(frames) == (4 + 8) / 1024


def test_player_controls_switch_the_frames(setting):
    target, columns = setting
    box = tap_player(TapScene(SIZE, target, columns, POSITIONS, "made here", dpi=20), SIGMAS,
                     initial_position=0.9, initial_sigma=0.73)
    controls = box.controls
    assert list(controls) == ["interpolation", "tap column", "σ"]
    assert isinstance(controls["interpolation"], w.ToggleButtons)
    assert [label for label, _ in controls["interpolation"].options] == list(INTERPOLATIONS)
    assert isinstance(controls["tap column"], w.SelectionSlider) and controls["tap column"].index == 1
    assert isinstance(controls["σ"], w.SelectionSlider) and controls["σ"].index == 1
    assert "KB in the page" in box.children[-1].value and "made here" in box.children[-1].value
    with pytest.raises(ValueError, match="initial_sigma 0.5 is not one of"):
        tap_player(TapScene(SIZE, target, columns, POSITIONS, "x"), SIGMAS, initial_sigma=0.5)
    with pytest.raises(ValueError, match="at least one position"):
        tap_frames(TapScene(SIZE, target, columns, [], "x"), SIGMAS)
