"""Accuracy against cost: the non-dominated (Pareto) frontier and the figure that draws it.

Every record becomes a point, coloured by technique and shaped by runtime; the frontier (no other record is both
cheaper and more accurate) is a step line. Labels are short ids placed without overlap by ``adjustText``: frontier
points always, the others only while few enough to stay readable. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from compresskit.engine import METRIC_NAMES
from compresskit.errors import CompressKitError
from compresskit.report.comparisons import latency_median
from compresskit.report.figures import MAP_LABEL, add_caption, technique_colour
from compresskit.report.records import RUNTIMES, TECHNIQUES, records_of
from compresskit.report.tables import short_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _scaled(field: str, factor: float) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda record: None if record.get(field) is None else record[field] * factor


# x axis name -> (label with its unit, cost of a record); records without a cost are left out.
PARETO_X: dict[str, tuple[str, Callable[[Mapping[str, Any]], float | None]]] = {
    "latency": ("CPU latency, median (ms)", latency_median),
    "size": ("serialized size (MB)", _scaled("size_bytes", 1e-6)),
    "macs": ("MACs per image (G)", _scaled("macs", 1e-9)),
}
RUNTIME_MARKERS = {"torch-eager": "o", "torch-compile": "^", "onnxruntime": "s"}
OTHER_RUNTIME_MARKER = "D"
LABEL_EVERY_POINT_UP_TO = 15  # beyond this many points only the frontier is labelled, so labels stay readable
LOG_SCALE_SPAN = 10.0  # a cost range wider than this ratio is drawn on a log axis
MAX_NAMES_PER_LABEL = 2  # points drawn on the same spot share one label: two names, then "+N"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pareto_frontier(points: Sequence[tuple[float | None, float | None] | None]) -> list[int]:
    """The indices of the non-dominated points, where a lower cost and a higher accuracy are better.

    A point is dominated when another costs no more and is no less accurate, and is strictly better in one of
    the two: of several points at one cost only the most accurate is kept, of several at one accuracy only the
    cheapest. Identical points do not dominate each other, so all of them are kept.

    Args:
        points: ``(cost, accuracy)`` pairs; a pair (or a value in it) that is None or NaN is skipped.

    Returns:
        Indices into ``points``, by increasing cost (then by position in ``points``).
    """
    valid = sorted((float(point[0]), -float(point[1]), index) for index, point in enumerate(points)
                   if point is not None and not _missing(point[0]) and not _missing(point[1]))
    frontier: list[int] = []
    best = -math.inf
    for _, group in itertools.groupby(valid, key=lambda entry: entry[0]):
        group = list(group)
        top = -group[0][1]  # the most accurate at this cost: sorted by accuracy, descending, within one cost
        if top > best:
            frontier += [index for _, negative, index in group if -negative == top]
            best = top
    return frontier


def _points(records: Sequence[Mapping[str, Any]], x: str, y: str) -> list[tuple[float, float, Mapping[str, Any]]]:
    x_of = PARETO_X[x][1]
    return [(x_of(record), 100.0 * record[y], record) for record in records
            if not _missing(x_of(record)) and not _missing(record.get(y))]


def _label_texts(points: Sequence[tuple[float, float, Mapping[str, Any]]], indices: Sequence[int]) \
        -> list[tuple[float, float, str]]:
    """One label per drawn spot: records measured alike (e.g. the same teacher in several studies) share it."""
    spots: dict[tuple[float, float], list[str]] = {}
    for index in indices:
        x_value, y_value, record = points[index]
        names = spots.setdefault((x_value, y_value), [])
        name = short_label(record["id"])
        if name not in names:
            names.append(name)
    texts = []
    for (x_value, y_value), names in spots.items():
        extra = len(names) - MAX_NAMES_PER_LABEL
        texts.append((x_value, y_value, ", ".join(names[:MAX_NAMES_PER_LABEL]) + (f" +{extra}" if extra > 0 else "")))
    return texts


def _legends(ax: "Axes", techniques: Sequence[str], runtimes: Sequence[str], frontier: bool, outside: bool) -> None:
    """Colour = technique, marker = runtime (hollow, so no colour is implied): two legends right of the figure
    (``outside``, for a figure of its own), else one in the axes (a caller's axes may share its figure)."""
    from matplotlib.lines import Line2D

    colours = [Line2D([], [], linestyle="", marker="o", color=technique_colour(technique), label=technique)
               for technique in techniques]
    shapes = [Line2D([], [], linestyle="", marker=RUNTIME_MARKERS.get(runtime, OTHER_RUNTIME_MARKER),
                     markerfacecolor="white", markeredgecolor="0.2", label=runtime) for runtime in runtimes]
    if frontier:
        shapes.append(Line2D([], [], color="0.15", linewidth=1.2, label="Pareto frontier"))
    if not outside:
        ax.legend(handles=colours + shapes, fontsize=6, ncols=2)
        return
    # Figure legends placed "outside": the constrained layout shrinks the axes to make room for them.
    ax.figure.legend(handles=colours, title="technique", fontsize=7, title_fontsize=7, loc="outside right upper")
    ax.figure.legend(handles=shapes, title="runtime", fontsize=7, title_fontsize=7, loc="outside right lower")


def _draw_points(ax: "Axes", points: Sequence[tuple[float, float, Mapping[str, Any]]], on_frontier: set[int]) -> None:
    """One scatter per (technique, runtime): the technique's colour, the runtime's marker; frontier points edged."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, (_, _, record) in enumerate(points):
        groups.setdefault((record["technique"], record["runtime"]), []).append(index)
    for (technique, runtime), indices in groups.items():
        ax.scatter([points[i][0] for i in indices], [points[i][1] for i in indices], zorder=3, s=36,
                   color=technique_colour(technique), marker=RUNTIME_MARKERS.get(runtime, OTHER_RUNTIME_MARKER),
                   edgecolors=["black" if i in on_frontier else "none" for i in indices], linewidths=0.9)


def _place_labels(ax: "Axes", labels: Sequence[tuple[float, float, str]],
                  points: Sequence[tuple[float, float, Mapping[str, Any]]]) -> None:
    texts = [ax.text(x_value, y_value, text, fontsize=7) for x_value, y_value, text in labels]
    if not texts:
        return
    from adjustText import adjust_text  # imported here: it loads pyplot and scipy

    # A fixed iteration count, not adjustText's default time limit, so the same results draw the same figure.
    adjust_text(texts, x=[p[0] for p in points], y=[p[1] for p in points], ax=ax, iter_lim=1000,
                expand=(1.2, 1.5), force_text=(0.3, 0.6), force_static=(0.3, 0.6),
                arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.5})


def _log_x(ax: "Axes") -> None:
    """A log x axis ticked 1, 2, 5, 10, 20... in plain numbers (the default 2x10^1 reads badly for ms and MB)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_pareto(records: Mapping[str, Any] | Sequence[Mapping[str, Any]], x: str = "latency", y: str = "map",
                *, baseline_lines: bool = True, ax: "Axes | None" = None, title: str | None = None) -> "Figure":
    """Accuracy against cost for every record, with the Pareto frontier as a step line.

    Colour says the technique, the marker the runtime (circle torch eager, triangle torch.compile, square ONNX
    Runtime); points on the frontier have a black edge. Labels are ids without their study prefix (e.g.
    ``teacher/ort-int8``): on the frontier always, elsewhere only when at most ``LABEL_EVERY_POINT_UP_TO`` points
    are drawn. The x axis is logarithmic when the costs span more than ``LOG_SCALE_SPAN`` times.

    Args:
        records: a results document (its environment becomes a caption under the axes) or a list of records;
            records lacking x or y are left out.
        x: ``"latency"`` (median ms), ``"size"`` (MB) or ``"macs"`` (G).
        y: a metric key (``map``, ``map50``, ...), drawn x100.
        baseline_lines: draw a dashed line from each record to its baseline when both are plotted.
        ax: axes to draw into; a new Figure when None.
        title: optional axes title.

    Returns:
        The matplotlib Figure.
    """
    if x not in PARETO_X:
        raise CompressKitError(f"x must be one of {', '.join(PARETO_X)}, got {x!r}")
    if y not in METRIC_NAMES:
        raise CompressKitError(f"y must be one of {', '.join(METRIC_NAMES)}, got {y!r}")
    points = _points(records_of(records), x, y)
    own_figure = ax is None
    if ax is None:
        from matplotlib.figure import Figure  # a bare Figure (not pyplot): notebooks show it once, scripts leak none

        ax = Figure(figsize=(9, 5.5), layout="constrained").add_subplot()
    if baseline_lines:
        by_id = {record["id"]: (x_value, y_value) for x_value, y_value, record in points}
        for x_value, y_value, record in points:
            if record.get("baseline") in by_id:
                base_x, base_y = by_id[record["baseline"]]
                ax.plot([base_x, x_value], [base_y, y_value], linestyle="--", color="0.8", linewidth=0.7, zorder=1)
    frontier = pareto_frontier([(x_value, y_value) for x_value, y_value, _ in points])
    if frontier:
        ax.step([points[i][0] for i in frontier], [points[i][1] for i in frontier], where="post", color="0.15",
                linewidth=1.2, zorder=2)
    _draw_points(ax, points, set(frontier))
    costs = [x_value for x_value, _, _ in points]
    if costs and min(costs) > 0 and max(costs) / min(costs) > LOG_SCALE_SPAN:
        _log_x(ax)
    ax.set_xlabel(PARETO_X[x][0] + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(MAP_LABEL if y == "map" else f"COCO {y.replace('map', 'mAP')} (x100)")
    if title:
        ax.set_title(title)
    order = {name: index for index, name in enumerate(TECHNIQUES)}
    techniques = sorted({record["technique"] for _, _, record in points}, key=lambda t: order.get(t, len(order)))
    runtimes = sorted({record["runtime"] for _, _, record in points},
                      key=lambda r: RUNTIMES.index(r) if r in RUNTIMES else len(RUNTIMES))
    if points:
        _legends(ax, techniques, runtimes, bool(frontier), outside=own_figure)
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.05, y=0.12)  # room inside the axes for the labels of the points at the edges
    add_caption(ax.figure, records)
    labelled = range(len(points)) if len(points) <= LABEL_EVERY_POINT_UP_TO else frontier
    _place_labels(ax, _label_texts(points, labelled), points)
    return ax.figure
