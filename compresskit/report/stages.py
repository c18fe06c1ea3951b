"""The combined-pipeline figure of lesson 06: what each stage of each route buys and costs against the fp32
teacher, drawn from the rows ``harness.combined.stage_rows`` makes of the study's records.
Introduced in ``06_combined_pipeline.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.errors import CompressKitError
from compresskit.report.figures import MAP_LABEL
from compresskit.report.labels import place_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROUTE_COLOURS = ("C1", "C0", "C2", "C3")
TARGET_STYLE = {"color": "0.4", "linestyle": "--", "linewidth": 0.8}


@dataclass(frozen=True)
class StageTargets:
    """The pipeline's targets against the fp32 teacher; each one None draws no line."""

    map_drop_points: float | None = None  # at most this many mAP points below the teacher
    size_ratio: float | None = None  # at least this many times smaller
    speedup: float | None = None  # at least this many times faster (paired)


def _stage_names(ax: "Axes", routes: dict[str, list[Mapping[str, Any]]], colours: dict[str, str]) -> None:
    """Under each step, its stage name per route in the route's colour; a name every route shares (the teacher,
    int8) is written once, in black."""
    steps = max(len(stages) for stages in routes.values())
    ax.set_xticks(range(steps), [""] * steps)
    # Below the rows of names (10 points a row): the colour of a name is its route's, as in the legend.
    ax.set_xlabel("stage (coloured by route)", fontsize=8, labelpad=4 + 10 * len(routes))
    for step in range(steps):
        names = {route: stages[step]["stage"] for route, stages in routes.items() if step < len(stages)}
        shared = len(set(names.values())) == 1
        for line, (route, name) in enumerate([next(iter(names.items()))] if shared else names.items()):
            ax.annotate(name, (step, 0), xycoords=ax.get_xaxis_transform(), xytext=(0, -4 - 10 * line),
                        textcoords="offset points", ha="center", va="top", fontsize=7,
                        color="black" if shared else colours[route])


def _target(ax: "Axes", y: float, text: str, right: bool = True) -> None:
    """A dashed target line, named above the line at its right (or left) end, where the routes leave room."""
    ax.axhline(y, **TARGET_STYLE)
    ax.annotate(text, (1.0 if right else 0.0, y), xycoords=("axes fraction", "data"), xytext=(-3 if right else 3, 2),
                textcoords="offset points", ha="right" if right else "left", va="bottom", fontsize=7, color="0.35")


def plot_stages(rows: Sequence[Mapping[str, Any]], targets: StageTargets | None = None) -> "Figure":
    """Three panels, one line of steps per route against the fp32 teacher: mAP, shipped size (log axis) and the
    paired speed-up with its 95 % interval; the targets dashed.

    Args:
        rows: one per stage, in route order, the route's teacher first: ``route``, ``stage`` (its short name),
            ``map`` (0-1 or None), ``size_mb``, ``speedup`` and ``speedup_interval`` ([low, high] or None).
        targets: lines to draw (none by default).

    Returns:
        The matplotlib Figure.

    Raises:
        CompressKitError: ``rows`` is empty.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not rows:
        raise CompressKitError("no stage rows to draw; measure a combined study first")
    targets = targets or StageTargets()
    routes: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        routes.setdefault(row["route"], []).append(row)
    colours = dict(zip(routes, ROUTE_COLOURS))
    teacher = rows[0]  # every route starts from the same teacher record
    figure = Figure(figsize=(14, 4.8), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (("map", MAP_LABEL, lambda row: None if row["map"] is None else 100 * row["map"], "{:.1f}"),
              ("size", "shipped size (MB, log scale)", lambda row: row["size_mb"], "{:.1f}"),
              ("speed", "speed-up over the fp32 teacher (x, paired, 95 % CI)", lambda row: row["speedup"],
               "{:.2f}x"))
    for ax, (panel, label, value_of, shown) in zip(axes, panels):
        for route, stages in routes.items():
            values = [float("nan") if value_of(row) is None else value_of(row) for row in stages]
            if panel == "speed":
                intervals = [row.get("speedup_interval") for row in stages]
                errors = [[0.0 if i is None else v - i[0] for v, i in zip(values, intervals)],
                          [0.0 if i is None else i[1] - v for v, i in zip(values, intervals)]]
                ax.errorbar(range(len(values)), values, yerr=errors, marker="o", capsize=3, color=colours[route],
                            label=route)
            else:
                ax.plot(range(len(values)), values, marker="o", color=colours[route], label=route)
        if panel == "map" and targets.map_drop_points is not None and teacher["map"] is not None:
            _target(ax, 100 * teacher["map"] - targets.map_drop_points,
                    f"target: at most {targets.map_drop_points:g} points below the teacher")
        if panel == "size":
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            if targets.size_ratio is not None:
                _target(ax, teacher["size_mb"] / targets.size_ratio, f"target: {targets.size_ratio:g}x smaller")
        if panel == "speed" and targets.speedup is not None:
            _target(ax, targets.speedup, f"target: {targets.speedup:g}x faster", right=False)  # speed-ups end high
        ax.set_xlim(-0.35, max(len(stages) for stages in routes.values()) - 0.45)
        ax.margins(y=0.12)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _stage_names(ax, routes, colours)
    figure.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=len(routes))
    figure.suptitle("The combined pipeline, stage by stage, against the fp32 teacher in ONNX Runtime (same run; "
                    "targets dashed)", fontsize=10)
    # Values last, once every line, target note and stage name is in place: the labels keep off all of them.
    for ax, (_, _, value_of, shown) in zip(axes, panels):
        points = [(step, value_of(row)) for stages in routes.values() for step, row in enumerate(stages)
                  if value_of(row) is not None]
        if value_of(teacher) is not None:
            place_labels(ax, [(0, value_of(teacher), shown.format(value_of(teacher)))], avoid=points)
        for route, stages in routes.items():
            place_labels(ax, [(step, value_of(row), shown.format(value_of(row))) for step, row in enumerate(stages)
                              if step > 0 and value_of(row) is not None], avoid=points, color=colours[route])
    return figure
