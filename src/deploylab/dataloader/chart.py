"""PNG charts of a diagnosis (samples/s per variant) and a worker sweep (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from deploylab.dataloader.report import BarChart


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_variant_chart(chart: BarChart, path: Path) -> Path:
    """A bar per variant; skipped variants appear as empty, labelled slots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        heights = [y or 0.0 for y in chart.y]
        colors = ["#4c72b0" if y is not None else "#dddddd" for y in chart.y]
        bars = ax.bar(chart.x, heights, color=colors)
        top = max(heights, default=1.0) or 1.0
        for bar, y in zip(bars, chart.y, strict=True):
            label = "skipped" if y is None else f"{y:.1f}"
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                (y or 0.0) + top * 0.01,
                label,
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.set_title(chart.title)
        ax.set_xlabel(chart.x_label)
        ax.set_ylabel(chart.y_label)
        ax.set_ylim(0, top * 1.15)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_sweep_chart(chart: BarChart, path: Path) -> Path:
    """Samples/s against num_workers, the knee marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        xs = [int(x) for x in chart.x]
        ys = [y or 0.0 for y in chart.y]
        ax.plot(xs, ys, marker="o", color="#4c72b0")
        if chart.marked is not None:
            knee = int(chart.marked)
            y = ys[xs.index(knee)]
            ax.plot([knee], [y], marker="o", markersize=14, fillstyle="none", color="#c44e52")
            at_right = knee == max(xs)  # keep the label inside the axes
            ax.annotate(
                f"knee: num_workers={knee}",
                (knee, y),
                textcoords="offset points",
                xytext=(-10 if at_right else 10, -18),
                ha="right" if at_right else "left",
                color="#c44e52",
            )
        ax.set_xticks(xs)
        ax.set_title(chart.title)
        ax.set_xlabel(chart.x_label)
        ax.set_ylabel(chart.y_label)
        ax.set_ylim(0, max(ys, default=1.0) * 1.15 or 1.0)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
