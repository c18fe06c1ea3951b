"""Accuracy against cost: the non-dominated (Pareto) frontier and the figure that draws it.

Every record becomes a point, coloured by technique and shaped by runtime; the frontier (no other record is both
cheaper and more accurate) is a step line. Labels are short ids placed where they cover no other label, marker or
line (:func:`~compresskit.report.labels.place_labels`): frontier points always, the others only while few enough to
stay readable. :func:`plot_every_variant` draws the kit's whole-results figures (lessons 01 and 06, ``compresskit
figures``). Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from compresskit.engine.evaluation import METRIC_NAMES
from compresskit.errors import CompressKitError
from compresskit.report.comparisons import latency_median, latency_noisy
from compresskit.report.figures import MAP_LABEL, MissingRecordsError, add_caption, technique_colour
from compresskit.report.labels import place_labels
from compresskit.report.records import TECHNIQUES, records_of
from compresskit.report.tables import short_label
from compresskit.runtimes import runtime_names

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
RUNTIME_MARKERS = {"torch-eager": "o", "torch-compile": "^", "onnxruntime": "s", "openvino": "P"}
OTHER_RUNTIME_MARKER = "D"
LABEL_EVERY_POINT_UP_TO = 15  # beyond this many points only the frontier is labelled, so labels stay readable
LOG_SCALE_SPAN = 10.0  # a cost range wider than this ratio is drawn on a log axis
MAX_NAMES_PER_LABEL = 2  # points drawn on the same spot share one label: two names, then "+N"
MAX_NAMES_BELOW = 4  # records below the y floor named in its note, the highest first
COLLAPSED_SHARE = 0.5  # every-variant figures: a record under this share of the best mAP is drawn below a cut axis
FLOOR_MARGIN = 5.0  # mAP points between the cut and the least accurate record kept above it


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


def timing_is_noisy(record: Mapping[str, Any]) -> bool:
    """Whether a record's latency should not be read as a position: its own timing is noisy, or its paired
    speed-up's interval is (the rules are ``measure``'s; docs/method.md, "Measurement")."""
    return bool(latency_noisy(record)) or bool((record.get("paired_latency") or {}).get("noisy"))


def _legends(ax: "Axes", techniques: Sequence[str], runtimes: Sequence[str], frontier: bool, outside: bool,
             noisy: bool = False) -> None:
    """Colour = technique, marker = runtime (hollow, so no colour is implied): two legends right of the figure
    (``outside``, for a figure of its own), else one in the axes (a caller's axes may share its figure)."""
    from matplotlib.lines import Line2D

    colours = [Line2D([], [], linestyle="", marker="o", color=technique_colour(technique), label=technique)
               for technique in techniques]
    shapes = [Line2D([], [], linestyle="", marker=RUNTIME_MARKERS.get(runtime, OTHER_RUNTIME_MARKER),
                     markerfacecolor="white", markeredgecolor="0.2", label=runtime) for runtime in runtimes]
    if frontier:
        shapes.append(Line2D([], [], color="0.15", linewidth=1.2, label="Pareto frontier"))
    if noisy:
        shapes.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="white", markeredgecolor="0.5",
                             markeredgewidth=1.2, label="noisy timing (hollow,\nnot on the frontier)"))
    if not outside:
        ax.legend(handles=colours + shapes, fontsize=6, ncols=2)
        return
    # Figure legends placed "outside": the constrained layout shrinks the axes to make room for them.
    ax.figure.legend(handles=colours, title="technique", fontsize=7, title_fontsize=7, loc="outside right upper")
    ax.figure.legend(handles=shapes, title="runtime", fontsize=7, title_fontsize=7, loc="outside right lower")


def _draw_points(ax: "Axes", points: Sequence[tuple[float, float, Mapping[str, Any]]], on_frontier: set[int],
                 hollow: set[int] = frozenset()) -> None:
    """One scatter per (technique, runtime): the technique's colour, the runtime's marker; frontier points edged;
    ``hollow`` points (a noisy timing) drawn as an outline in the technique's colour."""
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for index, (_, _, record) in enumerate(points):
        groups.setdefault((record["technique"], record["runtime"], index in hollow), []).append(index)
    for (technique, runtime, is_hollow), indices in groups.items():
        colour = technique_colour(technique)
        marker = RUNTIME_MARKERS.get(runtime, OTHER_RUNTIME_MARKER)
        if is_hollow:
            ax.scatter([points[i][0] for i in indices], [points[i][1] for i in indices], zorder=3, s=36,
                       facecolors="white", edgecolors=colour, marker=marker, linewidths=1.2)
            continue
        ax.scatter([points[i][0] for i in indices], [points[i][1] for i in indices], zorder=3, s=36,
                   color=colour, marker=marker,
                   edgecolors=["black" if i in on_frontier else "none" for i in indices], linewidths=0.9)


def _mark_below(ax: "Axes", below: Sequence[tuple[float, float, Mapping[str, Any]]], floor: float,
                top: float) -> None:
    """Cut the y axis at ``floor``: each record below it a hollow triangle on the bottom edge, named in a note."""
    ax.set_ylim(floor, top + 0.15 * (top - floor))  # room for the labels above the most accurate points
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    ax.scatter([x_value for x_value, _, _ in below], [0.012] * len(below), transform=edge, marker="v", s=30,
               facecolors="none", edgecolors=[technique_colour(record["technique"]) for _, _, record in below],
               zorder=3, clip_on=False)
    names = [f"{short_label(record['id'])} ({y_value:.1f})" for _, y_value, record in sorted(below, key=lambda p: -p[1])]
    shown = names[:MAX_NAMES_BELOW] + ([f"+{len(names) - MAX_NAMES_BELOW} more"] if len(names) > MAX_NAMES_BELOW else [])
    ax.text(0.99, 0.035, f"below {floor:g} (▼ on the edge):\n" + "\n".join(shown), transform=ax.transAxes,
            ha="right", va="bottom", fontsize=6.5, color="0.3",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})


def _log_x(ax: "Axes") -> None:
    """A log x axis ticked 1, 2, 5, 10, 20... in plain numbers (the default 2x10^1 reads badly for ms and MB)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_pareto(records: Mapping[str, Any] | Sequence[Mapping[str, Any]], x: str = "latency", y: str = "map",
                *, baseline_lines: bool = True, ax: "Axes | None" = None, title: str | None = None,
                y_floor: float | None = None) -> "Figure":
    """Accuracy against cost for every record, with the Pareto frontier as a step line.

    Colour says the technique, the marker the runtime (circle torch eager, triangle torch.compile, square ONNX
    Runtime, plus OpenVINO); points on the frontier have a black edge. On the latency axis a record whose timing is
    noisy (its own p90/median, or its paired interval) is drawn hollow and kept off the frontier. Labels are ids
    without their study prefix (e.g. ``teacher/ort-int8``): on the frontier always, elsewhere only when at most
    ``LABEL_EVERY_POINT_UP_TO`` points are drawn. The x axis is logarithmic when the costs span more than
    ``LOG_SCALE_SPAN`` times.

    Args:
        records: a results document (its environment becomes a caption under the axes) or a list of records;
            records lacking x or y are left out.
        x: ``"latency"`` (median ms), ``"size"`` (MB) or ``"macs"`` (G).
        y: a metric key (``map``, ``map50``, ...), drawn x100.
        baseline_lines: draw a dashed line from each record to its baseline when both are plotted.
        ax: axes to draw into; a new Figure when None.
        title: optional axes title.
        y_floor: the lowest accuracy shown (x100); records below it (e.g. a collapsed variant) are marked at the
            axes' bottom edge and named, with their value, in a note, so they do not squash everything else.

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
    # A noisy timing is drawn hollow and kept off the frontier: its position on the latency axis is not a fact.
    hollow = {index for index, (_, _, record) in enumerate(points) if x == "latency" and timing_is_noisy(record)}
    frontier = pareto_frontier([None if index in hollow else (x_value, y_value)
                                for index, (x_value, y_value, _) in enumerate(points)])
    if frontier:
        ax.step([points[i][0] for i in frontier], [points[i][1] for i in frontier], where="post", color="0.15",
                linewidth=1.2, zorder=2)
    _draw_points(ax, points, set(frontier), hollow)
    costs = [x_value for x_value, _, _ in points]
    if costs and min(costs) > 0 and max(costs) / min(costs) > LOG_SCALE_SPAN:
        _log_x(ax)
    ax.set_xlabel(PARETO_X[x][0] + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(MAP_LABEL if y == "map" else f"COCO {y.replace('map', 'mAP')} (x100)")
    if title:
        ax.set_title(title)
    order = {name: index for index, name in enumerate(TECHNIQUES)}
    techniques = sorted({record["technique"] for _, _, record in points}, key=lambda t: order.get(t, len(order)))
    registered = runtime_names()  # legend order: the registry's
    runtimes = sorted({record["runtime"] for _, _, record in points},
                      key=lambda r: registered.index(r) if r in registered else len(registered))
    if points:
        _legends(ax, techniques, runtimes, bool(frontier), outside=own_figure, noisy=bool(hollow))
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.05, y=0.12)  # room inside the axes for the labels of the points at the edges
    if y_floor is not None and any(y_value < y_floor for _, y_value, _ in points):
        _mark_below(ax, [point for point in points if point[1] < y_floor], y_floor,
                    top=max(y_value for _, y_value, _ in points))
    add_caption(ax.figure, records)
    # Frontier points first: they get the nearest free spots.
    labelled = list(frontier) + [index for index in range(len(points)) if index not in set(frontier)] \
        if len(points) <= LABEL_EVERY_POINT_UP_TO else frontier
    labels = _label_texts(points, labelled)
    spots = {(x_value, y_value) for x_value, y_value, _ in labels}
    place_labels(ax, labels, avoid=[(p[0], p[1]) for p in points if (p[0], p[1]) not in spots])
    return ax.figure


# Left out of the whole-kit Pareto figures: lesson 03's per-part sensitivity probes are scored on a slice of val
# (the first 100 images), so their mAPs do not compare with the full-val records, and none is a variant to ship.
EVERY_VARIANT_EXCLUDED = ("quantization/sensitivity/*",)
_EVERY_VARIANT_TITLES = {"latency": "mAP against CPU latency", "size": "mAP against shipped size",
                         "macs": "mAP against compute"}


def plot_every_variant(document: Mapping[str, Any] | Sequence[Mapping[str, Any]], x: str = "latency") -> "Figure":
    """Every variant of a results document on one Pareto figure (``pareto_{x}.png`` of ``compresskit figures``):
    :func:`plot_pareto` without baseline lines (with every study's records they would cross the whole figure),
    without the records of :data:`EVERY_VARIANT_EXCLUDED`, and with the y axis cut a little under the frontier
    under the records that did not collapse (those that did, under :data:`COLLAPSED_SHARE` of the best mAP, are
    marked on the edge and named).

    Args:
        document: a results document (its environment becomes the caption) or a list of records.
        x: ``"latency"``, ``"size"`` or ``"macs"``.

    Raises:
        MissingRecordsError: no record has both an mAP and an ``x`` value.
    """
    if x not in PARETO_X:
        raise CompressKitError(f"x must be one of {', '.join(PARETO_X)}, got {x!r}")
    x_of = PARETO_X[x][1]
    records = [record for record in records_of(document)
               if not any(fnmatch.fnmatchcase(record["id"], pattern) for pattern in EVERY_VARIANT_EXCLUDED)]
    if not any(not _missing(x_of(record)) and not _missing(record.get("map")) for record in records):
        raise MissingRecordsError(f"no record has both an mAP and a {x} value; run `compresskit reproduce`")
    shown = {**document, "records": records} if isinstance(document, Mapping) else records
    accuracies = [y_value for _, y_value, _ in _points(records, x, "map")]
    # Collapsed variants (e.g. 90 % of the weights zeroed, an mAP near 0) would squash every other point into a
    # thin band: cut the axis at a round number under the rest and name them instead.
    kept = [value for value in accuracies if value >= COLLAPSED_SHARE * max(accuracies)]
    floor = 5 * math.floor((min(kept) - FLOOR_MARGIN) / 5)
    cut = floor > 0 and len(kept) < len(accuracies)
    return plot_pareto(shown, x=x, baseline_lines=False, title=f"{_EVERY_VARIANT_TITLES[x]}, every measured variant",
                       y_floor=floor if cut else None)
