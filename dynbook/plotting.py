"""One house style for every figure, set once by ``dynbook.setup``."""

from __future__ import annotations

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

