"""Figures regenerated from results records: accuracy against cost (Pareto), curves, metric bars.

Every function returns a bare matplotlib ``Figure`` (not pyplot), so notebooks show it once and scripts never
leak open figures. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.engine import METRIC_NAMES
from compresskit.errors import CompressKitError
from compresskit.report.comparisons import latency_median
from compresskit.report.records import TECHNIQUES, records_frame, records_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
# x axis name -> (label, value from a record); None values are skipped when plotting.
_PARETO_X = {
    "latency": ("CPU latency, median (ms)", latency_median),
    "size": ("serialized size (MB)", lambda r: None if r.get("size_bytes") is None else r["size_bytes"] / 1e6),
    "macs": ("MACs (G)", lambda r: None if r.get("macs") is None else r["macs"] / 1e9),
}


# Group names of metric_bars: the size buckets read as sizes, the others as COCO writes them.
_METRIC_LABELS = {"map": "AP (all sizes)", "map50": "AP50", "map75": "AP75", "map_small": "small",
                  "map_medium": "medium", "map_large": "large"}


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
        raise CompressKitError(f"x must be one of {', '.join(_PARETO_X)}, got {x!r}")
    if y not in METRIC_NAMES:
        raise CompressKitError(f"y must be one of {', '.join(METRIC_NAMES)}, got {y!r}")
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


def metric_bars(records: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                keys: Sequence[str] = ("map", "map_small", "map_medium", "map_large"), label_key: str = "id",
                title: str | None = None) -> "Figure":
    """COCO AP (shown x100) grouped by metric, by default all sizes then the small/medium/large buckets; one bar
    per record in each group, drawn with seaborn from :func:`records_frame`.

    Args:
        records: a results document or a list of records; a missing value leaves its bar out.
        keys: metric names from ``engine.METRIC_NAMES``, one group each.
        label_key: the record field that names each bar in the legend (a ``RECORD_FIELDS`` name).
        title: optional axes title.

    Returns:
        The matplotlib Figure.
    """
    unknown = [key for key in keys if key not in METRIC_NAMES]
    if unknown:
        raise CompressKitError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_NAMES)}")
    import seaborn as sns  # imported here so the kit loads without seaborn's start-up cost
    from matplotlib.figure import Figure

    frame = records_frame(records)
    if label_key not in frame.columns:
        raise CompressKitError(f"label_key {label_key!r} is not a record field; use one of {', '.join(frame.columns)}")
    bars = frame.melt(id_vars=[label_key], value_vars=list(keys), var_name="metric", value_name="ap")
    bars = bars.dropna(subset=["ap"]).astype({"ap": float})
    if bars.empty:
        raise CompressKitError(f"none of the records has a value for {', '.join(keys)}; evaluate them first")
    groups = [_METRIC_LABELS.get(key, key) for key in keys if key in set(bars["metric"])]
    bars["ap"] *= 100.0
    bars["metric"] = bars["metric"].map(lambda key: _METRIC_LABELS.get(key, key))
    ax = Figure(figsize=(7, 3.2), layout="constrained").add_subplot()
    # errorbar=None: each bar is one record's value, there is nothing to estimate an interval from.
    sns.barplot(data=bars, x="metric", y="ap", hue=label_key, errorbar=None, ax=ax,
                order=groups, hue_order=list(dict.fromkeys(bars[label_key])))
    for container in ax.containers:
        ax.bar_label(container, fmt="%.1f", fontsize=7)
    ax.set_xlabel("")
    ax.set_ylabel("COCO AP x100")
    ax.legend(fontsize=7, title=None)
    if title:
        ax.set_title(title)
    return ax.figure


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


def plot_ranked_bars(values: Mapping[str, float], xlabel: str, title: str | None = None,
                     reference: float | None = None, reference_label: str = "reference") -> "Figure":
    """Horizontal bars sorted from the lowest value up, e.g. mAP with one part quantized at a time.

    Args:
        values: label -> value.
        xlabel: axis label (with its unit).
        reference: a vertical dashed line (e.g. the fp32 mAP), labelled ``reference_label``.

    Returns:
        The matplotlib Figure.
    """
    ax = _new_axes(None)
    ranked = sorted(values.items(), key=lambda item: item[1])
    ax.barh([label for label, _ in ranked], [value for _, value in ranked], color="#4363d8")
    if reference is not None:
        ax.axvline(reference, linestyle="--", color="0.3", label=reference_label)
        ax.legend(fontsize=8)
    low = min([value for _, value in ranked] + ([reference] if reference is not None else []))
    high = max([value for _, value in ranked] + ([reference] if reference is not None else []))
    margin = max(0.5, 0.1 * (high - low))
    ax.set_xlim(low - margin, high + margin)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return ax.figure
