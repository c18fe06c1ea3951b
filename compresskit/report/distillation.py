"""Figures of the distillation lesson: each distilled student against its no-KD control (from results records),
the gradient scale of the KD loss against temperature, and the logged loss terms of a run.
Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.report.figures import MAP_LABEL, MissingRecordsError, add_caption, technique_colour
from compresskit.report.records import records_of
from compresskit.report.tables import short_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KD_TECHNIQUES = ("logit_kd", "feature_kd", "kd", "box_kd")
MIN_MAP_SPAN = 4.0  # mAP points the accuracy panel spans at least, so a fraction of a point does not look large


def distillation_groups(document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) \
        -> dict[str, list[Mapping[str, Any]]]:
    """``{control id: [distilled records]}``: every ``logit_kd``/``feature_kd``/``kd``/``box_kd`` record with an
    mAP whose baseline (its no-KD control, trained with the same budget) is in the records with an mAP too."""
    by_id = {record["id"]: record for record in records_of(document)}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in by_id.values():
        control = by_id.get(record.get("baseline") or "")
        if record.get("technique") in KD_TECHNIQUES and record.get("map") is not None and control \
                and control.get("map") is not None:
            groups.setdefault(control["id"], []).append(record)
    return groups


def plot_distillation(document: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                      target_gain: float | None = None) -> "Figure":
    """Each distilled student against its no-KD control: their mAP (left, on an axis zoomed to the models, not
    from 0, with the control dashed) and the gain in points (right, bars from 0: a difference has a true zero).

    Args:
        document: a results document (its environment becomes the caption) or a list of records.
        target_gain: the gain the lesson asks for, in mAP points: a dashed line on the gain panel.

    Returns:
        The matplotlib Figure.

    Raises:
        MissingRecordsError: no ``logit_kd``/``feature_kd``/``kd``/``box_kd`` record whose control is in the records.
    """
    from matplotlib.figure import Figure

    groups = distillation_groups(document)
    if not groups:
        raise MissingRecordsError(f"no distillation records ({', '.join(KD_TECHNIQUES)}) with their no-KD control "
                                  "in these records; run `compresskit reproduce --only distillation`")
    by_id = {record["id"]: record for record in records_of(document)}
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    ax_map, ax_gain = figure.subplots(1, 2, width_ratios=(1.15, 1))
    position, ticks, names, gain_ticks, gain_names, values = 0.0, [], [], [], [], []
    for control_id, students in groups.items():
        control = by_id[control_id]
        control_map = 100 * control["map"]
        start = position
        for record in [control, *students]:
            value = 100 * record["map"]
            values.append(value)
            is_control = record is control
            colour = "0.3" if is_control else technique_colour(record["technique"])
            ax_map.scatter(position, value, s=60, zorder=3, color="white" if is_control else colour,
                           edgecolors=colour, linewidths=1.5)
            ax_map.annotate(f"{value:.1f}", (position, value), textcoords="offset points", xytext=(0, 8),
                            ha="center", fontsize=8)
            name = short_label(record["id"])
            ticks.append(position)
            names.append(f"{name}\n({'no KD, control' if is_control else record['technique']})")
            if not is_control:
                gain = value - control_map
                bar = ax_gain.bar(position, gain, width=0.6, color=colour)
                ax_gain.bar_label(bar, [f"{gain:+.1f}"], fontsize=8, padding=2)
                gain_ticks.append(position)
                gain_names.append(f"{name}\n({record['technique']})")
            position += 1
        ax_map.hlines(control_map, start - 0.3, position - 0.7, color="0.3", linestyle="--", linewidth=0.8,
                      label="no-KD control" if start == 0 else None)
        position += 0.5  # a gap between the groups of different controls
    low, high = min(values), max(values)
    margin = max(0.0, MIN_MAP_SPAN - (high - low)) / 2 + 0.6
    ax_map.set_ylim(low - margin, high + margin + 0.5)  # + room for the value labels above the points
    ax_map.set_xticks(ticks, names, fontsize=7)
    ax_map.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)
    ax_map.set_ylabel(MAP_LABEL + ", axis not from 0")
    ax_map.set_title("mAP of each model", fontsize=9)
    ax_map.legend(fontsize=7, loc="lower right")
    ax_gain.axhline(0.0, color="0.3", linewidth=0.8)
    if target_gain is not None:
        ax_gain.axhline(target_gain, color="#e6194b", linestyle=":", linewidth=1.0,
                        label=f"target: +{target_gain:g} points")
        ax_gain.legend(fontsize=7, loc="upper left")
    gains = [patch.get_height() for patch in ax_gain.patches]
    top = max([0.0, *gains, target_gain or 0.0])
    bottom = min([0.0, *gains])
    ax_gain.set_ylim(bottom - 0.15 * (top - bottom or 1.0) if bottom < 0 else 0.0, 1.25 * top if top > 0 else 1.0)
    ax_gain.set_xticks(gain_ticks, gain_names, fontsize=7)
    ax_gain.set_xlim(min(gain_ticks) - 0.6, max(gain_ticks) + 0.6)
    ax_gain.set_ylabel("gain over the no-KD control (mAP points)")
    ax_gain.set_title("what distillation bought", fontsize=9)
    for ax in (ax_map, ax_gain):
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle("Distillation under one training budget: each student against its no-KD control", fontsize=11)
    return add_caption(figure, document)


def plot_gradient_scale(with_t_squared: Sequence[Mapping[str, float]],
                        without: Sequence[Mapping[str, float]]) -> "Figure":
    """Gradient norm of the KD loss against temperature, with and without the ``T**2`` factor (log-log), from
    ``distill.gradient_scale`` rows."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = figure.add_subplot()
    for rows, label in ((with_t_squared, "KL x T² (corrected)"), (without, "without T² (the article)")):
        ax.plot([r["temperature"] for r in rows], [r["grad_norm"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("|d loss / d student logits| (log scale)")
    ax.set_title("KD gradient against temperature", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return figure


def plot_kd_steps(rows: Sequence[Mapping[str, float]], title: str | None = None, smooth: int = 1) -> "Figure":
    """Each logged loss term against the training step (``Distiller.history`` or ``meta["kd_steps"]`` rows),
    optionally as a running mean over ``smooth`` rows."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 3.5), layout="constrained")
    ax = figure.add_subplot()
    terms = [key for key in (rows[0] if rows else {}) if key != "step"]
    steps = np.array([row.get("step", index) for index, row in enumerate(rows)], dtype=float)
    for term in terms:
        values = np.array([row[term] for row in rows], dtype=float)
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
        ax.plot(steps[len(steps) - len(values):], values, label=term)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss term (log scale)" + (f", mean of {smooth} steps" if smooth > 1 else ""))
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return figure
