"""Point labels that stay readable: each label goes to the first nearby spot where it covers no other label, no
drawn marker, no line and stays inside its axes.

Placement is deterministic (the same results draw the same figure) and measured in display space, so it must run
once the axes have their final size: :func:`place_labels` runs the figure's layout first and keeps its labels out
of any later layout pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.text import Annotation

# Offsets from the point, in typographic points, nearest first; (dx, dy, ha, va) for each of eight directions.
_RADII = (5.0, 11.0, 18.0, 28.0, 40.0)
_DIRECTIONS = ((1, 0, "left", "center"), (1, 1, "left", "bottom"), (1, -1, "left", "top"),
               (0, 1, "center", "bottom"), (0, -1, "center", "top"), (-1, 0, "right", "center"),
               (-1, 1, "right", "bottom"), (-1, -1, "right", "top"))
MARKER_HALF_SIZE = 5.0  # display pixels around a point's centre that a label must not cover
LEADER_FROM = 10.0  # labels placed at least this far from their point get a thin line back to it
LINE_SAMPLES_PER_PIXEL = 0.5  # how densely a line is sampled to test whether a label lies on it


def _line_points(ax: "Axes"):
    """Display coordinates sampled along every drawn line of ``ax`` (curves, step lines, axhlines; not the grid)."""
    import numpy as np

    samples = []
    for line in ax.get_lines():
        if not line.get_visible() or line.get_linestyle() in ("None", "", " "):
            continue
        vertices = line.get_transform().transform_path(line.get_path()).vertices  # steps included
        vertices = vertices[np.isfinite(vertices).all(axis=1)]
        for start, end in zip(vertices[:-1], vertices[1:]):
            count = max(2, int(np.hypot(*(end - start)) * LINE_SAMPLES_PER_PIXEL))
            samples.append(np.linspace(start, end, count))
    return np.concatenate(samples) if samples else np.empty((0, 2))


def _count_inside(box, points, margin: float = 0.0) -> int:
    """How many of ``points`` (display, N x 2) lie within ``margin`` pixels of ``box``."""
    if not len(points):
        return 0
    return int(((points[:, 0] > box.x0 - margin) & (points[:, 0] < box.x1 + margin)
                & (points[:, 1] > box.y0 - margin) & (points[:, 1] < box.y1 + margin)).sum())


def place_labels(ax: "Axes", labels: Sequence[tuple[float, float, str]],
                 avoid: Sequence[tuple[float, float]] = (), avoid_lines: bool = True, fontsize: float = 7,
                 **text_style: Any) -> list["Annotation"]:
    """Annotate each ``(x, y, text)`` of ``labels`` (data coordinates) beside its point, in that order of priority.

    A spot is scored by what the label would cover there: the axes' edge (worst), another text of ``ax`` or its
    own point, a marker of ``labels`` or ``avoid``, a line of ``ax``. The nearest spot that covers nothing wins, else
    the one that covers least. A label set further than :data:`LEADER_FROM` from its point gets a leader line.

    Args:
        ax: the axes, with everything else already drawn (its lines are avoided).
        labels: the points to label and their texts.
        avoid: further points whose markers no label may cover.
        avoid_lines: keep labels off the lines of ``ax`` (e.g. a frontier or a curve).
        fontsize: the labels' size; ``text_style`` goes to each annotation (e.g. ``color``).

    Returns:
        The annotations, in the order of ``labels``.
    """
    import numpy as np
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    if not labels:
        return []
    ax.figure.draw_without_rendering()  # the layout places the axes: positions are measured from here on
    pad = 2.0  # display pixels kept between a label and what it avoids
    frame = ax.get_window_extent()
    markers = ax.transData.transform(np.array([(x, y) for x, y, _ in labels] + list(avoid), dtype=float)
                                     .reshape(-1, 2))
    lines = _line_points(ax) if avoid_lines else np.empty((0, 2))
    # Texts already in the axes (an earlier call's labels, a target's note) are avoided like this call's own.
    placed: list = [Text.get_window_extent(text) for text in ax.texts if text.get_visible() and text.get_text()]
    annotations: list["Annotation"] = []
    for index, (x, y, text) in enumerate(labels):
        others = np.delete(markers, index, axis=0)
        best = None
        for radius in _RADII:
            for dx, dy, ha, va in _DIRECTIONS:
                offset = (dx * radius, dy * radius) if dx == 0 or dy == 0 else (0.75 * dx * radius, 0.75 * dy * radius)
                probe = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                    fontsize=fontsize, **text_style)
                box = probe.get_window_extent()
                probe.remove()
                grown = Bbox.from_extents(box.x0 - pad, box.y0 - pad, box.x1 + pad, box.y1 + pad)
                outside = not (frame.x0 + pad <= box.x0 and box.x1 <= frame.x1 - pad
                               and frame.y0 + pad <= box.y0 and box.y1 <= frame.y1 - pad)
                score = (1000 * outside + 20 * sum(grown.overlaps(other) for other in placed)
                         + 20 * _count_inside(box, markers[index:index + 1], MARKER_HALF_SIZE)
                         + 5 * _count_inside(grown, others, MARKER_HALF_SIZE) + min(5, _count_inside(grown, lines)))
                if best is None or score < best[0]:
                    best = (score, offset, ha, va, grown)
                if score == 0:
                    break
            if best[0] == 0:
                break
        _, offset, ha, va, grown = best
        leader = {"arrowstyle": "-", "color": "0.55", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3}
        annotation = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                 fontsize=fontsize, zorder=4,
                                 arrowprops=leader if float(np.hypot(*offset)) >= LEADER_FROM else None,
                                 **text_style)
        annotation.set_in_layout(False)  # placed for this layout: a later layout pass must not move the axes
        annotations.append(annotation)
        placed.append(grown)
    return annotations


def _text_boxes(ax: "Axes") -> list[tuple[str, Any]]:
    """``(text, display box)`` of every visible text of ``ax``; an annotation's box without its leader line."""
    from matplotlib.text import Text

    ax.figure.draw_without_rendering()
    return [(text.get_text(), Text.get_window_extent(text)) for text in ax.texts
            if text.get_visible() and text.get_text()]


def labels_outside(ax: "Axes") -> list[str]:
    """The texts of ``ax`` (labels and annotations) that reach outside its frame: none, in a readable figure."""
    boxes = _text_boxes(ax)  # runs the layout first
    frame = ax.get_window_extent()
    return [text for text, box in boxes if not (frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5
                                                and frame.y0 - 0.5 <= box.y0 and box.y1 <= frame.y1 + 0.5)]


def labels_overlapping(ax: "Axes") -> list[tuple[str, str]]:
    """Pairs of texts of ``ax`` whose boxes overlap: none, in a readable figure."""
    boxes = _text_boxes(ax)
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
