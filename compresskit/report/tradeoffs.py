"""The backbone figures of lesson 05: the MACs split of each design, and the trade-off figure: accuracy against ONNX Runtime speed-up over the teacher, fp32 and
int8, one pair of points per backbone. Drawn from the rows ``harness.backbones.tradeoff_rows`` makes of a backbone
study's records. Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.report.labels import place_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FP32_COLOUR, INT8_COLOUR, TARGET_COLOUR = "#4363d8", "#f58231", "#e6194b"


def plot_tradeoffs(rows: Sequence[Mapping[str, Any]], teacher_map: float, target_speedup: float | None = None,
                   target_map_gap: float | None = None) -> "Figure":
    """mAP against ONNX Runtime speed-up over the teacher, fp32 and int8, one point per backbone and runtime.

    The int8 point sits at the fp32 speed-up times int8's own paired speed-up (both measured in the same study),
    joined to its fp32 point by an arrow; each backbone is named once, at its fastest point.

    Args:
        rows: one per backbone, with ``name``, ``map``, ``speedup``, ``int8_speedup`` and ``int8_map`` (None where
            int8 was not evaluated: its point is drawn at the fp32 mAP); rows without mAP or speed-up are left out.
        teacher_map: the teacher's mAP (0-1), a dashed line.
        target_speedup, target_map_gap: the lesson's target (at least this much faster, at most this far below the
            teacher, mAP 0-1), drawn as a red vertical and horizontal line; None draws none.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.add_subplot()
    ax.axhline(100 * teacher_map, color="0.3", linestyle="--", linewidth=0.8, label="teacher (x1.0)")
    if target_map_gap is not None:
        ax.axhline(100 * (teacher_map - target_map_gap), color=TARGET_COLOUR, linestyle=":", linewidth=0.8,
                   label=f"target: at most {100 * target_map_gap:g} points below the teacher")
    if target_speedup is not None:
        ax.axvline(target_speedup, color=TARGET_COLOUR, linestyle="-.", linewidth=0.8,
                   label=f"target: at least {target_speedup:g}x faster")
    drawn = [row for row in rows if row.get("map") is not None and row.get("speedup") is not None]
    labels = []
    for row in drawn:
        y = 100 * row["map"]
        ax.scatter(row["speedup"], y, color=FP32_COLOUR, zorder=3)
        x_end, y_end = row["speedup"], y
        if row.get("int8_speedup") is not None:
            x_end = row["speedup"] * row["int8_speedup"]
            y_end = y if row.get("int8_map") is None else 100 * row["int8_map"]
            # A line under the arrow, so labels keep off it too.
            ax.plot([row["speedup"], x_end], [y, y_end], color="0.75", linewidth=0.8, zorder=1)
            ax.annotate("", (x_end, y_end), (row["speedup"], y),
                        arrowprops={"arrowstyle": "->", "color": "0.6", "shrinkA": 4, "shrinkB": 4})
            ax.scatter(x_end, y_end, color=INT8_COLOUR, marker="s", zorder=3)
        labels.append((x_end, y_end, row["name"]))
    ax.scatter([], [], color=FP32_COLOUR, label="ONNX Runtime fp32")
    ax.scatter([], [], color=INT8_COLOUR, marker="s",
               label="ONNX Runtime int8 (at the fp32 mAP where int8 was not evaluated)")
    speedups = [row["speedup"] for row in drawn] + [x for x, _, _ in labels] + [1.0]
    if target_speedup is not None:
        speedups.append(target_speedup)
    ax.set_xlim(0.9 * min(speedups) - 0.05, 1.08 * max(speedups) + 0.05)
    ax.set_xlabel("speed-up over the teacher's ONNX Runtime fp32 core (x, paired)")
    ax.set_ylabel("val mAP@[.5:.95] (x100)")
    ax.set_title("Lightweight backbones: accuracy against speed, fp32 -> int8 (ONNX Runtime)", fontsize=10)
    ax.grid(alpha=0.3)
    figure.legend(fontsize=7, loc="outside lower center", ncols=3)
    ax.margins(y=0.08)
    fp32_points = [(row["speedup"], 100 * row["map"]) for row in drawn]
    place_labels(ax, labels, avoid=fp32_points)
    return figure


def plot_macs_split(rows: list[dict]) -> "Figure":
    """Stacked bars of :func:`compresskit.backbones.backbone_table` rows: the trunk's MACs and the FPN's and head's, per backbone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 0.45 * len(rows) + 1.2), layout="constrained")
    ax = figure.add_subplot()
    names = [row["name"] for row in rows]
    trunk = [row["trunk_macs"] / 1e9 for row in rows]
    rest = [(row["macs"] - row["trunk_macs"]) / 1e9 for row in rows]
    ax.barh(names, trunk, color="#4363d8", label="trunk")
    ax.barh(names, rest, left=trunk, color="#a9a9a9", label="FPN and FCOS head (the same design on every trunk)")
    ax.invert_yaxis()
    ax.set_xlabel("multiply-accumulates per 320x320 image (G)")
    figure.legend(fontsize=8, loc="outside upper center", ncols=2)
    ax.grid(alpha=0.3, axis="x")
    return figure
