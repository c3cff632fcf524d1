"""Charts as inline SVG: matplotlib draws them, the HTML embeds the markup, so the report is
one file that opens offline and needs no script. Text stays SVG text (`svg.fonttype: none`),
crisp at any zoom and small."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# one colour per run or per series, readable for common colour-vision deficiencies
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
SLO_COLOR = "#C62828"
_STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same metrics everywhere
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
}
_HEAD = re.compile(r"^.*?(?=<svg)", re.S)
_FONT = re.compile(r"'DejaVu Sans'(?!,)")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


@contextmanager
def figure(width_in: float = 6.4, height_in: float = 3.2) -> Iterator[Figure]:
    """A figure drawn with the report's style (use `to_svg` inside the block)."""
    with matplotlib.rc_context(_STYLE):  # type: ignore[arg-type]
        yield Figure(figsize=(width_in, height_in), layout="constrained")


def to_svg(fig: Figure) -> str:
    """The figure as an inline `<svg>` element (no XML prolog, no metadata)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = _METADATA.sub("", _HEAD.sub("", buffer.getvalue(), count=1), count=1)
    # let CSS size it: keep the viewBox, drop the fixed size in points
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)
    return _FONT.sub("'DejaVu Sans', sans-serif", svg)


def log_scale_if_wide(ax: Axes, values: Sequence[float], axis: str = "x") -> None:
    """Log scale when positive values span more than ~1.5 decades."""
    positive = [v for v in values if v > 0]
    if len(positive) > 1 and max(positive) / min(positive) > 30:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # plain numbers at 1, 2, 5 x 10^k (readable ms), unlabelled minor ticks
        which = ax.xaxis if axis == "x" else ax.yaxis
        which.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        which.set_minor_formatter(NullFormatter())


def legend_below(fig: Figure, ax: Axes) -> None:
    """The axes' legend under the plot, where it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncols = 3 if max(len(label) for label in labels) < 16 else 2
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), ncols))


def legend_right(ax: Axes) -> None:
    """The legend beside the axes, outside the data area."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def no_data(ax: Axes, text: str = "no data") -> None:
    """Mark an empty panel so it reads as empty rather than broken."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])
