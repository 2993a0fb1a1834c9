"""Markdown tables, as the library writes results (``study.md``) and the book shows them."""

from __future__ import annotations

from typing import Sequence


def table_text(rows: Sequence[dict]) -> str:
    """Rows of dicts (the same keys, in the same order) as the text of a Markdown table."""
    if not rows:
        raise ValueError("a table needs at least one row")
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if list(row) != header:
            raise ValueError(f"every row needs the columns {header}, got {list(row)}")
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row.values()) + " |")
    return "\n".join(lines)
