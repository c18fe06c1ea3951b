"""Figures of the pruning lesson, drawn from results records and schedule rows (bare matplotlib Figures).

Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure


def _scaled(record: dict, factor: float, *keys: str) -> float:
    """``record[keys...] * factor``, NaN when not measured (a gap in the line)."""
    value = record
    for key in keys:
        value = (value or {}).get(key)
    return float("nan") if value is None else value * factor


def plot_unstructured(baseline: dict, records: Sequence[dict]) -> Figure:
    """Three panels against conv sparsity: mAP, dense vs gzip size, latency — with the baseline at 0 %."""
    rows = [(0.0, baseline)] + [(r["config"]["amount"], r) for r in records]
    sparsity = [100 * amount for amount, _ in rows]
    figure = Figure(figsize=(10, 3), layout="constrained")
    ax_map, ax_size, ax_latency = figure.subplots(1, 3)
    ax_map.plot(sparsity, [_scaled(r, 100, "map") for _, r in rows], marker="o")
    ax_map.set_ylabel("mAP x 100")
    ax_size.plot(sparsity, [_scaled(r, 1e-6, "size_bytes") for _, r in rows], marker="o", label="dense file")
    ax_size.plot(sparsity, [_scaled(r, 1e-6, "size_gzip_bytes") for _, r in rows], marker="s", label="gzip")
    ax_size.set_ylabel("size (MB)")
    ax_size.legend(fontsize=8)
    ax_latency.plot(sparsity, [_scaled(r, 1, "latency_ms", "median") for _, r in rows], marker="o")
    ax_latency.set_ylabel("latency, median (ms)")
    ax_latency.set_ylim(bottom=0)
    for ax in (ax_map, ax_size, ax_latency):
        ax.set_xlabel("conv weights zeroed (%)")
        ax.grid(alpha=0.3)
    figure.suptitle(f"Global L1 unstructured pruning of the {baseline.get('model') or 'detector'}")
    return figure


def plot_iterative(steps: Sequence[dict], baseline_map: float, baseline_macs: int) -> Figure:
    """mAP against core GMACs over iterative prune -> fine-tune steps, before and after each fine-tune."""
    figure = Figure(figsize=(5.5, 3.5), layout="constrained")
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
    ax.set_xlabel("core GMACs (320x320)")
    ax.set_ylabel("mAP x 100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure
