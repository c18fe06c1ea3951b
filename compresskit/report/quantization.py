"""The operator-time figure of the quantization lesson: where a core's time goes, per ONNX operator type, for
several variants side by side (the profiles ``compresskit.quantize.op_time_profile`` measures).
Introduced in ``03_quantization.ipynb``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_op_profile(profiles: Mapping[str, Mapping[str, float]], top: int = 10) -> "Figure":
    """Grouped horizontal bars of time per op type, one bar per variant (e.g. ``{"fp32": ..., "int8": ...}``).

    Args:
        profiles: ``{label: compresskit.quantize.op_time_profile(...)}``.
        top: op types shown by their largest time in any variant; the rest are summed as ``other``.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot).
    """
    from matplotlib.figure import Figure

    largest: Counter[str] = Counter()
    for profile in profiles.values():
        for op, ms in profile.items():
            largest[op] = max(largest[op], ms)
    shown = [op for op, _ in largest.most_common(top)]
    rows = shown + (["other"] if len(largest) > len(shown) else [])
    figure = Figure(figsize=(7, 0.45 * len(rows) * max(1, len(profiles)) ** 0.5 + 1.5), layout="constrained")
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(profiles))
    positions = np.arange(len(rows))
    for index, (label, profile) in enumerate(profiles.items()):
        values = [profile.get(op, 0.0) for op in shown]
        if "other" in rows:
            values.append(sum(ms for op, ms in profile.items() if op not in shown))
        total = sum(profile.values())
        axes.barh(positions + index * height, values, height=height, label=f"{label} ({total:.1f} ms)")
    axes.set_yticks(positions + height * (len(profiles) - 1) / 2, rows)
    axes.invert_yaxis()  # largest op type on top
    axes.set_xlabel("milliseconds per run (kernel time, ONNX Runtime profiler)")
    axes.set_title("Where the core's time goes, by operator type")
    axes.legend(loc="lower right")
    return figure
