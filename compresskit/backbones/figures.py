"""The figure of lesson 05's backbone table. Introduced in ``05_lightweight_backbones.ipynb``."""

from __future__ import annotations


def plot_macs_split(rows: list[dict]) -> "Figure":
    """Stacked bars of :func:`backbone_table` rows: the trunk's MACs and the FPN's and head's, per backbone."""
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
