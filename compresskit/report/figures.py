"""What every figure of the kit shares (the caption, a technique's colour, the missing-records error) and the
generic figures: curves, metric bars, ranked bars, training curves and the calibration sweep. The lessons' own
figures have modules of their own in :mod:`compresskit.report` (``pareto``, ``pruning``, ``distillation``,
``tradeoffs``, ``stages``, ``detections``).

Every function returns a bare matplotlib ``Figure`` (not pyplot), so notebooks show it once and scripts never
leak open figures. A figure drawn from a whole results document carries a caption naming the machine (CPU model,
ISA flags) under its axes. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.engine.evaluation import METRIC_NAMES
from compresskit.errors import CompressKitError
from compresskit.report.records import TECHNIQUES, records_frame, records_of
from compresskit.report.tables import short_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

QUANTIZATION_TECHNIQUES = ("static_ptq", "qat")
MAP_LABEL = "COCO mAP@[.5:.95] (x100)"
MIN_SWEEP_SPAN = 2.0  # mAP points the calibration figure's axis spans at least


class MissingRecordsError(CompressKitError):
    """A results document lacks the records a figure is drawn from; the message names the study that makes them."""

# Group names of metric_bars: the size buckets read as sizes, the others as COCO writes them.
_METRIC_LABELS = {"map": "AP (all sizes)", "map50": "AP50", "map75": "AP75", "map_small": "small",
                  "map_medium": "medium", "map_large": "large"}


def _new_axes(ax: "Axes | None") -> "Axes":
    if ax is not None:
        return ax
    # A bare Figure (not pyplot) so notebooks show it once and scripts never leak open figures.
    from matplotlib.figure import Figure

    return Figure(figsize=(7, 4.5), layout="constrained").add_subplot()


def technique_colour(technique: str) -> tuple[float, float, float]:
    """The kit's stable colour of a technique, the same in every figure (unknown techniques share one colour)."""
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    slot = 2 * (TECHNIQUES.index(technique) if technique in TECHNIQUES else len(TECHNIQUES))
    return palette[slot % 20 + (slot // 20) % 2]  # tab20's dark shades first, so neighbours differ


def environment_caption(environment: Mapping[str, Any] | None) -> str | None:
    """One line naming where the numbers were measured: CPU model, ISA flags, threads and runtime versions.

    Args:
        environment: a results document's ``environment`` stamp.

    Returns:
        The caption, or None when the stamp is empty.
    """
    environment = environment or {}
    parts = [f"CPU: {environment['cpu']}" if environment.get("cpu") else None,
             f"ISA: {' '.join(environment['isa'])}" if environment.get("isa") else None,
             f"{environment['threads']} threads" if environment.get("threads") else None,
             ", ".join(f"{name} {environment[name]}" for name in ("torch", "onnxruntime") if environment.get(name))]
    caption = "; ".join(part for part in parts if part)
    return caption or None


def add_caption(figure: "Figure", document: Any) -> "Figure":
    """Write the environment caption under everything in ``figure`` when ``document`` is a whole results document
    (a list of records carries no environment: no caption).

    The caption goes below the lowest thing the figure draws (an x label, or a legend laid out under the axes), so
    call this once the axes and legends are in place: it freezes the layout. Save with ``bbox_inches="tight"`` to
    keep it, as ``draw_figures`` and notebooks' inline display do.
    """
    caption = environment_caption(document.get("environment")) if isinstance(document, Mapping) else None
    if not caption:
        return figure
    figure.draw_without_rendering()  # runs the layout, so every artist has its final place
    to_figure = figure.transFigure.inverted()
    for legend in figure.legends:
        # A figure legend follows the figure's box, which a tight save grows down to the caption: pin it instead.
        legend.set_bbox_to_anchor(legend.get_window_extent().transformed(to_figure), transform=figure.transFigure)
        legend.set_loc("center")
    figure.set_layout_engine("none")  # pinned legends would no longer get their room from a new layout
    lowest = figure.get_tightbbox().y0 / figure.get_figheight()  # inches -> figure fraction
    figure.text(0.5, min(lowest, 0.0) - 0.01, caption, ha="center", va="top", fontsize=7, color="0.35")
    return figure


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


def _calibration_setting(record: Mapping[str, Any]) -> str:
    """What a quantized record was calibrated with, apart from the number of images (one curve per setting)."""
    config = record.get("config") or {}
    inner = config.get("config") or {}
    parts = [str(record.get("model")), inner.get("method") or ("PT2E" if record.get("runtime") == "torch-compile"
                                                                else None)]
    if config.get("activations"):
        parts.append(f"{config['activations']} activations")
    if inner.get("exclude") or config.get("float_parts"):
        parts.append("some parts kept in float")
    return ", ".join(part for part in parts if part)


def calibration_sweeps(document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) \
        -> dict[tuple[str, str], dict[str, dict[int, Mapping[str, Any]]]]:
    """The calibration sweeps of a results document: ``{(baseline id, model): {setting: {images: record}}}``.

    Quantized records (``static_ptq``, ``qat``) whose config names ``calibration_images`` are grouped by the
    baseline they are compared against and their model, then by their other settings (method, activations). Only
    groups with at least one setting measured at two or more image counts are kept (a sweep); the single-count
    settings beside it stay, to be drawn as points next to the curve.
    """
    groups: dict[tuple[str, str], dict[str, dict[int, Mapping[str, Any]]]] = {}
    for record in records_of(document):
        images = (record.get("config") or {}).get("calibration_images")
        if record.get("technique") in QUANTIZATION_TECHNIQUES and images and record.get("map") is not None:
            group = groups.setdefault((str(record.get("baseline")), str(record.get("model"))), {})
            # A repeated count (the study's default run is also a point of its sweep) keeps the later record.
            group.setdefault(_calibration_setting(record), {})[int(images)] = record
    return {key: settings for key, settings in groups.items() if any(len(points) > 1 for points in settings.values())}


def plot_calibration_sweep(document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> "Figure":
    """int8 mAP against the number of calibration images (log x), one curve per calibration setting, with the
    fp32 baseline as a dashed line. Introduced in ``03_quantization.ipynb``.

    Args:
        document: a results document (its environment becomes the caption) or a list of records.

    Returns:
        The matplotlib Figure.

    Raises:
        MissingRecordsError: no quantized records at two or more calibration sizes against one baseline.
    """
    sweeps = calibration_sweeps(document)
    if not sweeps:
        raise MissingRecordsError("no calibration sweep in these records (quantized records with config "
                                  "'calibration_images' at two or more sizes against one baseline); run "
                                  "`compresskit reproduce --only quantization`")
    by_id = {record["id"]: record for record in records_of(document)}
    ax = _new_axes(None)
    counts = sorted({images for settings in sweeps.values() for points in settings.values() for images in points})
    for baseline in dict.fromkeys(baseline for baseline, _ in sweeps):  # one line per baseline, in order
        if by_id.get(baseline, {}).get("map") is not None:
            ax.axhline(100 * by_id[baseline]["map"], color="0.3", linestyle="--", linewidth=0.8,
                       label=f"fp32 baseline ({short_label(baseline)})")
    drops, values = [], [100 * by_id[b]["map"] for b, _ in sweeps if by_id.get(b, {}).get("map") is not None]
    for (baseline, _), settings in sweeps.items():
        for setting, points in settings.items():
            images = sorted(points)
            maps = [100 * points[count]["map"] for count in images]
            values += maps
            if by_id.get(baseline, {}).get("map") is not None:
                drops += [100 * by_id[baseline]["map"] - value for value in maps]
            ax.plot(images, maps, marker="o" if len(images) > 1 else "D", linestyle="-" if len(images) > 1 else "",
                    label=setting)
    # At least MIN_SWEEP_SPAN points tall: a fraction of a point of calibration noise must not look like a trend.
    middle, half = (max(values) + min(values)) / 2, max(MIN_SWEEP_SPAN, max(values) - min(values)) / 2 * 1.15
    ax.set_ylim(middle - half, middle + half)
    ax.set_xscale("log", base=2)  # image counts are chosen as powers of two (4, 16, 64, 256)
    ax.set_xticks(counts, [str(count) for count in counts])
    ax.set_xlabel("calibration images (log scale)")
    ax.set_ylabel(MAP_LABEL)
    ax.set_title("int8 accuracy against calibration set size"
                 + (f": every run within {max(drops):.1f} points of fp32" if drops and max(drops) >= 0 else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return add_caption(ax.figure, document)
