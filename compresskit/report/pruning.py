"""Figures of the pruning lesson, drawn from results records and schedule rows: the unstructured sparsity sweep
the iterative prune -> fine-tune path, and the per-part sensitivity scan. Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from compresskit.prune.schedule import map_drop_points
from compresskit.report.figures import MAP_LABEL, MissingRecordsError, add_caption
from compresskit.report.records import records_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _scaled(record: Mapping[str, Any], factor: float, *keys: str) -> float:
    """``record[keys...] * factor``, NaN when not measured (a gap in the line)."""
    value: Any = record
    for key in keys:
        value = (value or {}).get(key)
    return float("nan") if value is None else value * factor


def plot_unstructured(baseline: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> "Figure":
    """Three panels against the share of conv weights zeroed, with the unpruned ``baseline`` at 0 %: mAP, dense
    and gzip file size, and the paired speed-up over the baseline with its 95 % interval (each record's
    ``paired_latency``: the kit's rule for "faster", as timings of separate runs drift with the machine's load).

    Args:
        baseline: the unpruned record the sweep is compared against.
        records: the ``unstructured_pruning`` records, each with ``config["amount"]``; drawn by amount.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure

    rows = [(0.0, baseline)] + sorted(((r["config"]["amount"], r) for r in records), key=lambda row: row[0])
    sparsity = [100 * amount for amount, _ in rows]
    figure = Figure(figsize=(11, 3.4), layout="constrained")
    ax_map, ax_size, ax_speed = figure.subplots(1, 3)
    ax_map.plot(sparsity, [_scaled(r, 100, "map") for _, r in rows], marker="o")
    ax_map.set_ylabel(MAP_LABEL)
    ax_map.set_title("accuracy", fontsize=9)
    ax_size.plot(sparsity, [_scaled(r, 1e-6, "size_bytes") for _, r in rows], marker="o", label="dense file")
    ax_size.plot(sparsity, [_scaled(r, 1e-6, "size_gzip_bytes") for _, r in rows], marker="s", label="gzip")
    ax_size.set_ylabel("size (MB)")
    ax_size.set_ylim(bottom=0)
    ax_size.set_title("file size", fontsize=9)
    ax_size.legend(fontsize=8)
    # The baseline is the reference of every ratio: exactly 1x, no interval.
    speedups, low, high = [1.0], [0.0], [0.0]
    for _, record in rows[1:]:
        paired = record.get("paired_latency") or {}
        speedup, interval = paired.get("speedup"), paired.get("interval")
        speedups.append(float("nan") if speedup is None else speedup)
        low.append(0.0 if speedup is None or not interval else speedup - interval[0])
        high.append(0.0 if speedup is None or not interval else interval[1] - speedup)
    ax_speed.axhline(1.0, color="0.4", linestyle="--", linewidth=0.8, label="as fast as unpruned")
    ax_speed.errorbar(sparsity, speedups, yerr=[low, high], marker="o", capsize=3, label="paired speed-up, 95 % CI")
    ax_speed.set_ylabel("speed-up over unpruned (x, paired)")
    finite = [value for value in speedups if value == value] + [s - lo for s, lo in zip(speedups, low) if s == s] \
        + [s + hi for s, hi in zip(speedups, high) if s == s]
    spread = max(0.25, max(abs(value - 1.0) for value in finite) * 1.3)  # a small axis would magnify noise
    ax_speed.set_ylim(1.0 - spread, 1.0 + spread)
    ax_speed.set_title("speed", fontsize=9)
    ax_speed.legend(fontsize=8, loc="upper left")
    for ax in (ax_map, ax_size, ax_speed):
        ax.set_xlabel("conv weights zeroed (%)")
        ax.grid(alpha=0.3)
    figure.suptitle(f"Global L1 unstructured pruning of the {baseline.get('model') or 'detector'}, no fine-tuning")
    return figure


def unstructured_sweep(document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) \
        -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """The unstructured sweep of a results document: ``(baseline record, its unstructured_pruning records)``, of
    the first baseline that has them (lesson 02 sweeps one detector).

    Raises:
        MissingRecordsError: no ``unstructured_pruning`` record with its baseline in the records.
    """
    by_id = {record["id"]: record for record in records_of(document)}
    sweeps: dict[str, list[Mapping[str, Any]]] = {}
    for record in by_id.values():
        if record.get("technique") == "unstructured_pruning" and record.get("baseline") in by_id \
                and (record.get("config") or {}).get("amount") is not None:
            sweeps.setdefault(record["baseline"], []).append(record)
    if not sweeps:
        raise MissingRecordsError("no unstructured_pruning records with their baseline in these records; run "
                                  "`compresskit reproduce --only pruning`")
    baseline, sparse = next(iter(sweeps.items()))
    return by_id[baseline], sparse


def plot_sparsity(document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> "Figure":
    """:func:`plot_unstructured` of a results document's sweep (:func:`unstructured_sweep`), captioned with the
    document's environment (``sparsity.png``).

    Raises:
        MissingRecordsError: no ``unstructured_pruning`` record with its baseline in the document.
    """
    baseline, sparse = unstructured_sweep(document)
    return add_caption(plot_unstructured(baseline, sparse), document)


def plot_iterative(steps: Sequence[Mapping[str, Any]], baseline_map: float, baseline_macs: int) -> "Figure":
    """mAP against core GMACs over iterative prune -> fine-tune steps (``prune.iterative_prune`` rows), before and
    after each fine-tune, read left to right as the model gets cheaper."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.8), layout="constrained")
    ax = figure.add_subplot()
    path_x, path_y = [baseline_macs / 1e9], [100 * baseline_map]
    for step in steps:
        path_x += [step["macs_pruned"] / 1e9, step["macs_finetuned"] / 1e9]
        path_y += [100 * step["map_pruned"], 100 * step["map_finetuned"]]
    ax.plot(path_x, path_y, color="0.7", linestyle="--", zorder=1)
    ax.scatter(path_x[:1], path_y[:1], color="black", label="unpruned", zorder=2)
    ax.scatter(path_x[1::2], path_y[1::2], color="tab:red", label="after pruning step", zorder=2)
    ax.scatter(path_x[2::2], path_y[2::2], color="tab:green", label="after fine-tune", zorder=2)
    for step in steps:
        ax.annotate(f"{step['ratio']:.0%}", (step["macs_finetuned"] / 1e9, 100 * step["map_finetuned"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.invert_xaxis()  # read left to right as the model gets cheaper
    ax.set_xlabel("core GMACs (320x320), fewer to the right")
    ax.set_ylabel(MAP_LABEL)
    ax.set_title("Iterative pruning: each step pruned, then fine-tuned (labels: channels pruned)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def plot_sensitivity(rows: Sequence[dict], baseline_map: float) -> "Figure":
    """mAP drop (points) against pruning ratio, one line per part.

    Args:
        rows: the output of :func:`compresskit.prune.sensitivity_scan`.
        baseline_map: mAP (0-1) of the unpruned detector, measured in the same run.

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot(1, 1, 1)
    for part in dict.fromkeys(row["part"] for row in rows):
        points = sorted((row["ratio"], map_drop_points(row, baseline_map)) for row in rows if row["part"] == part)
        ax.plot([r for r, _ in points], [d for _, d in points], marker="o", label=part)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("pruning ratio of the part (fraction of channels removed)")
    ax.set_ylabel("mAP drop (points)")
    ax.set_title("Sensitivity: one part pruned at a time")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
