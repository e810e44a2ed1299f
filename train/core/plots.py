"""Figures of the reports (evaluation, fusion labels, complexity histograms), drawn headless and saved atomically.

matplotlib is imported only here and only when a figure is drawn: it is an optional, heavy package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (training nodes have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG at ``path`` and close it.

    The image is written next to ``path`` first and moved into place, so a reader (or a resumed run) never sees a
    half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(fig)
    tmp.replace(path)
    return path


def save_accuracy_figure(
    fig: Any, ax: Any, path: str | Path, xlabel: str, ylabel: str, title: str, **legend: Any
) -> Path:
    """Finish and save a plot of accuracy (y, 0 to 1) against a non-negative x (tokens, budgets): the one look of
    the evaluation, budget and pipeline figures. ``legend`` goes to ``ax.legend``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
