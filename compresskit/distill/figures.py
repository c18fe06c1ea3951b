"""Figures of the distillation lesson (bare matplotlib Figures), drawn from measured rows and checkpoint metadata.

Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure


def plot_gradient_scale(with_t_squared: Sequence[dict], without: Sequence[dict]) -> Figure:
    """Gradient norm of the KD loss against temperature, with and without the ``T**2`` factor (log-log)."""
    figure = Figure(figsize=(5, 3.2), layout="constrained")
    ax = figure.add_subplot()
    for rows, label in ((with_t_squared, "KL x T² (corrected)"), (without, "without T² (the article)")):
        ax.plot([r["temperature"] for r in rows], [r["grad_norm"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("|d loss / d student logits|")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return figure


def plot_kd_steps(rows: Sequence[dict], title: str | None = None, smooth: int = 1) -> Figure:
    """Each logged loss term against the training step (``Distiller.history`` or ``meta["kd_steps"]`` rows),
    optionally as a running mean over ``smooth`` rows."""
    import numpy as np

    figure = Figure(figsize=(6, 3.2), layout="constrained")
    ax = figure.add_subplot()
    terms = [key for key in (rows[0] if rows else {}) if key != "step"]
    steps = np.array([row.get("step", index) for index, row in enumerate(rows)], dtype=float)
    for term in terms:
        values = np.array([row[term] for row in rows], dtype=float)
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
        ax.plot(steps[len(steps) - len(values):], values, label=term)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss term")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return figure
