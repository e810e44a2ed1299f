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
