"""Every figure of the kit redrawn from a results document alone: ``compresskit figures`` and ``reproduce``.

The figures are drawn by :mod:`compresskit.report`; this module only chooses them, hands the backbone and combined
figures the rows and targets of their studies, and writes the files.

The files :func:`draw_figures` writes (each one skipped, and said so, when the document lacks its records):

- ``pareto_latency.png``, ``pareto_size.png``, ``pareto_macs.png``: mAP against median CPU latency, serialized size
  and MACs for every record, with the Pareto frontier (lessons 01 and 06);
- ``sparsity.png``: global unstructured pruning, mAP, dense and gzip size and the paired speed-up (with its
  interval) against the share of conv weights zeroed, with its unpruned baseline at 0 % (lesson 02);
- ``calibration.png``: int8 mAP against the number of calibration images (lesson 03);
- ``distillation.png``: each distilled student's mAP next to its no-KD control, and the gain in points (lesson 04);
- ``backbones.png``: the backbone trade-offs, mAP against ONNX Runtime speed-up over the teacher (lesson 05);
- ``combined.png``: each stage of the combined pipeline's two routes against the fp32 teacher (lesson 06).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from compresskit.data.files import atomic_write_bytes
from compresskit.harness.backbones import plot_tradeoffs, tradeoff_rows
from compresskit.harness.combined import plot_stages
from compresskit.harness.targets import TARGETS
from compresskit.report import (MissingRecordsError, ResultsFileError, add_caption, plot_calibration_sweep,
                                plot_distillation, plot_every_variant, plot_sparsity, read_results, records_of)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_DPI = 120
KD_GAIN_TARGET = "kd-gain"  # the target drawn on distillation.png (harness.targets)


def plot_backbones(document: Mapping[str, Any]) -> "Figure":
    """Lesson 05's trade-off figure from a results document (``backbones.tradeoff_rows`` and ``plot_tradeoffs``).

    Raises:
        MissingRecordsError: the document has no backbone study (its teacher's ONNX Runtime record and one trunk).
    """
    records = records_of(document)
    teacher = next((record for record in records if record["id"] == "backbones/teacher/ort-fp32"), None)
    rows = tradeoff_rows(records) if teacher is not None and teacher.get("map") is not None else []
    if not rows:
        raise MissingRecordsError("no backbone study in these records (backbones/teacher/ort-fp32 and the trunks' "
                                  "ort-fp32 records); run `compresskit reproduce --only backbones`")
    return add_caption(plot_tradeoffs(rows, teacher["map"]), document)


def plot_distillation_with_target(document: Mapping[str, Any]) -> "Figure":
    """``report.plot_distillation`` with the lesson's gain target (``kd-gain`` of ``harness.targets``)."""
    target = next((target.threshold for target in TARGETS if target.id == KD_GAIN_TARGET), None)
    return plot_distillation(document, target_gain=target)


# file name -> how to draw it from a results document (raises MissingRecordsError when its records are absent).
FIGURES: dict[str, Callable[[Mapping[str, Any]], "Figure"]] = {
    "pareto_latency.png": lambda document: plot_every_variant(document, x="latency"),
    "pareto_size.png": lambda document: plot_every_variant(document, x="size"),
    "pareto_macs.png": lambda document: plot_every_variant(document, x="macs"),
    "sparsity.png": plot_sparsity, "calibration.png": plot_calibration_sweep,
    "distillation.png": plot_distillation_with_target, "backbones.png": plot_backbones, "combined.png": plot_stages,
}


def _document(results: Mapping[str, Any] | str | os.PathLike) -> Mapping[str, Any]:
    if isinstance(results, Mapping):
        return results
    path = Path(results)
    if not (path / "results.json" if path.is_dir() else path).is_file():
        raise ResultsFileError(f"no results file at {path}; give a results.json (or its folder) written by "
                               "`compresskit reproduce`, a lesson or `compresskit study`")
    return read_results(path)


def draw_figures(results: Mapping[str, Any] | str | os.PathLike, out_dir: str | os.PathLike,
                 log: Callable[[str], None] | None = print) -> list[Path]:
    """Draw every figure of :data:`FIGURES` (see the module docstring for the files) from a results document alone.

    Args:
        results: a results document, or a ``results.json`` (or the folder holding it).
        out_dir: folder for the PNG files; created if needed. Each file is replaced atomically.
        log: where to say which figures were drawn and which were skipped, and why (None: silent).

    Returns:
        The paths of the figures drawn, in :data:`FIGURES` order.

    Raises:
        ResultsFileError: ``results`` names no results file, or an invalid one.
    """
    document = _document(results)
    out = Path(out_dir)
    drawn: list[Path] = []
    for name, draw in FIGURES.items():
        try:
            figure = draw(document)
        except MissingRecordsError as error:
            if log is not None:
                log(f"skipped {name}: {error}")
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")  # "tight" keeps the caption
        drawn.append(atomic_write_bytes(out / name, buffer.getvalue()))
    if log is not None:
        log(f"drew {len(drawn)} figure(s) into {out}: {', '.join(path.name for path in drawn) or 'none'}")
    return drawn
