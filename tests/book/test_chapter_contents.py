"""What particular chapters must show, read from the notebooks the smoke build executed."""

from __future__ import annotations

import json


def _outputs(smoke_book, stem: str) -> tuple[str, int]:
    """All text a chapter printed, and how many figures it drew."""
    nb = json.loads((smoke_book.executed / "notebooks" / f"{stem}.ipynb").read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs
    )
    return text, sum("image/png" in o.get("data", {}) for o in outputs)


def test_delay_chapter_shows_the_three_arms_and_the_ablation(smoke_book):
    text, figures = _outputs(smoke_book, "08_delays")
    assert "output spikes at [5, 10, 11]" in text
    assert "without delays, every sample gets the same class scores: True" in text
    assert "SHD is not run" in text
    assert "| fixed random delays |" in text and "| shuffled among synapses |" in text
    assert figures == 6
