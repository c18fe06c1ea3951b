"""Figures regenerated from results records: accuracy against cost (Pareto), curves, metric bars.

Every function returns a bare matplotlib ``Figure`` (not pyplot), so notebooks show it once and scripts never
leak open figures. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.report.records import METRIC_KEYS, TECHNIQUES, latency_median, records_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
# x axis name -> (label, value from a record); None values are skipped when plotting.
_PARETO_X = {
    "latency": ("CPU latency, median (ms)", latency_median),
    "size": ("serialized size (MB)", lambda r: None if r.get("size_bytes") is None else r["size_bytes"] / 1e6),
    "macs": ("MACs (G)", lambda r: None if r.get("macs") is None else r["macs"] / 1e9),
}


def _new_axes(ax: "Axes | None") -> "Axes":
    if ax is not None:
        return ax
    # A bare Figure (not pyplot) so notebooks show it once and scripts never leak open figures.
    from matplotlib.figure import Figure

    return Figure(figsize=(7, 4.5), layout="constrained").add_subplot()


def plot_pareto(records: Mapping[str, Any] | Sequence[Mapping[str, Any]], x: str = "latency", y: str = "map",
                *, baseline_lines: bool = True, ax: "Axes | None" = None, title: str | None = None) -> "Figure":
    """Accuracy against cost for every record: one colour per technique, points labelled by id.

    Args:
        records: a results document or a list of records; records lacking x or y are left out.
        x: ``"latency"`` (median ms), ``"size"`` (MB) or ``"macs"`` (G).
        y: a metric key (``map``, ``map50``, ...), drawn x100.
        baseline_lines: draw a dashed line from each record to its baseline when both are plotted.
        ax: axes to draw into; a new Figure when None.
        title: optional axes title.

    Returns:
        The matplotlib Figure.
    """
    if x not in _PARETO_X:
        raise ValueError(f"x must be one of {', '.join(_PARETO_X)}, got {x!r}")
    if y not in METRIC_KEYS:
        raise ValueError(f"y must be one of {', '.join(METRIC_KEYS)}, got {y!r}")
    xlabel, x_of = _PARETO_X[x]
    points = {r["id"]: (x_of(r), r[y] * 100.0, r) for r in records_of(records)
              if x_of(r) is not None and r.get(y) is not None}
    ax = _new_axes(ax)
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors  # stable colour per technique across every figure of the kit
    if baseline_lines:
        for x_value, y_value, record in points.values():
            if record.get("baseline") in points:
                base_x, base_y, _ = points[record["baseline"]]
                ax.plot([base_x, x_value], [base_y, y_value], linestyle="--", color="0.7", linewidth=0.8, zorder=1)
    order = {technique: index for index, technique in enumerate(TECHNIQUES)}
    techniques = sorted({r["technique"] for _, _, r in points.values()}, key=lambda t: order.get(t, len(order)))
    for technique in techniques:
        group = [(px, py) for px, py, r in points.values() if r["technique"] == technique]
        slot = 2 * order.get(technique, len(order))  # tab20's dark shades first, so neighbours differ
        ax.scatter(*zip(*group), label=technique, zorder=2, color=palette[slot % 20 + (slot // 20) % 2])
    for record_id, (x_value, y_value, _) in points.items():
        ax.annotate(record_id, (x_value, y_value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{y.replace('map', 'mAP')} (x100)")
    if title:
        ax.set_title(title)
    if techniques:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax.figure


def plot_curve(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str, label: str | None = None,
               ax: "Axes | None" = None) -> "Figure":
    """One line with markers, e.g. mAP against sparsity or calibration size.

    Args:
        xs, ys: the points.
        xlabel, ylabel: axis labels.
        label: legend entry; call again with the same ``ax`` to overlay curves.
        ax: axes to draw into; a new Figure when None.

    Returns:
        The matplotlib Figure.
    """
    ax = _new_axes(ax)
    ax.plot(list(xs), list(ys), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if label is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax.figure


def metric_bars(records: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("map", "map_small", "map_medium", "map_large"),
                label_key: str = "id", title: str | None = None) -> "Figure":
    """Grouped bars of mAP-type metrics (shown x100) for each record; a missing value is left out."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2))
    ax = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(records)
    for slot, record in enumerate(records):
        values = [100 * record[k] if record.get(k) is not None else 0.0 for k in keys]
        bars = ax.bar([i + slot * width for i in range(len(keys))], values, width, label=record[label_key])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + width * (len(records) - 1) / 2 for i in range(len(keys))], list(keys))
    ax.set_ylabel("COCO AP x 100")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    figure.tight_layout()
    return figure


def training_curves(metadata: dict[str, dict]) -> "Figure":
    """Validation mAP over epochs, from the ``history`` stored in each checkpoint's metadata."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3))
    ax = figure.add_subplot(1, 1, 1)
    for name, meta in metadata.items():
        points = [(entry["epoch"], 100 * entry["metrics"]["map"]) for entry in meta.get("history", [])
                  if entry.get("metrics")]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP@[.5:.95] x 100")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    return figure
