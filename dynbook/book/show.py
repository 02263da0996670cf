"""What a chapter shows: Markdown tables of measured rows (numbers formatted here, never typed
into prose). Figures take one house style (:func:`use_style`, set once by ``dynbook.setup``)."""

from __future__ import annotations

from typing import Iterable, Sequence


def cell(value, fmt: str = ".3g") -> str:
    """One table cell: floats in ``fmt``, everything else as ``str``; ``|`` escaped."""
    text = format(value, fmt) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence], *, fmt: str = ".3g"):
    """A Markdown table (an IPython ``Markdown`` object; a cell that ends with it shows it)."""
    from IPython.display import Markdown

    header = list(header)
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"table: a row has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append("| " + " | ".join(cell(v, fmt) for v in row) + " |")
    return Markdown("\n".join(lines))


# ----------------------------------------------------------------------------- figures

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": "medium",
    "legend.frameon": False,
    "font.size": 10,
}


def use_style() -> None:
    import matplotlib

    matplotlib.rcParams.update(STYLE)
