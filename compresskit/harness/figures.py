"""Every figure of the kit redrawn from a results document alone: ``compresskit figures`` and ``reproduce``.

The files :func:`draw_figures` writes (each one skipped, and said so, when the document lacks its records):

- ``pareto_latency.png``, ``pareto_size.png``, ``pareto_macs.png``: mAP against median CPU latency, serialized size
  and MACs for every record, with the Pareto frontier (lessons 01 and 06);
- ``sparsity.png``: global unstructured pruning, mAP, dense and gzip size and latency against the share of
  conv weights zeroed, with its unpruned baseline at 0 % (lesson 02);
- ``calibration.png``: int8 mAP against the number of calibration images (lesson 03);
- ``distillation.png``: each distilled student's mAP next to its no-KD control (lesson 04);
- ``backbones.png``: the backbone trade-offs, mAP against ONNX Runtime speed-up over the teacher (lesson 05);
- ``combined.png``: each stage of the combined pipeline's two routes against the fp32 teacher (lesson 06).
"""

from __future__ import annotations

import fnmatch
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from compresskit.data.files import atomic_write_bytes
from compresskit.harness.combined import plot_stages
from compresskit.report import (PARETO_X, MissingRecordsError, ResultsFileError, add_caption, plot_calibration_sweep,
                                plot_distillation, plot_pareto, read_results, records_of)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_DPI = 120
# Left out of the whole-kit Pareto figures: lesson 03's per-part sensitivity probes are scored on a slice of val
# (the first 100 images), so their mAPs do not compare with the full-val records, and none is a variant to ship.
PARETO_EXCLUDED = ("quantization/sensitivity/*",)
_PARETO_TITLES = {"latency": "mAP against CPU latency", "size": "mAP against shipped size",
                  "macs": "mAP against compute"}


def _pareto(axis: str) -> Callable[[Mapping[str, Any]], "Figure"]:
    def draw(document: Mapping[str, Any]) -> "Figure":
        x_of = PARETO_X[axis][1]
        records = [record for record in records_of(document)
                   if not any(fnmatch.fnmatchcase(record["id"], pattern) for pattern in PARETO_EXCLUDED)]
        if not any(x_of(record) is not None and record.get("map") is not None for record in records):
            raise MissingRecordsError(f"no record has both an mAP and a {axis} value; run `compresskit reproduce`")
        # No lines to each baseline: with every study's records they would cross the whole figure.
        return plot_pareto({**document, "records": records}, x=axis, baseline_lines=False,
                           title=f"{_PARETO_TITLES[axis]}, every measured variant")
    return draw


def plot_sparsity(document: Mapping[str, Any]) -> "Figure":
    """Lesson 02's unstructured sparsity curve from a results document: the ``unstructured_pruning`` records of the
    first baseline that has them, with that baseline at 0 % (``prune.plot_unstructured`` draws it).

    Raises:
        MissingRecordsError: no ``unstructured_pruning`` record with its baseline in the document.
    """
    from compresskit.prune import plot_unstructured

    by_id = {record["id"]: record for record in records_of(document)}
    sweeps: dict[str, list[Mapping[str, Any]]] = {}
    for record in by_id.values():
        if record.get("technique") == "unstructured_pruning" and record.get("baseline") in by_id \
                and (record.get("config") or {}).get("amount") is not None:
            sweeps.setdefault(record["baseline"], []).append(record)
    if not sweeps:
        raise MissingRecordsError("no unstructured_pruning records with their baseline in these records; run "
                                  "`compresskit reproduce --only pruning`")
    baseline, sparse = next(iter(sweeps.items()))  # lesson 02 sweeps one detector; a file holds one sweep
    return add_caption(plot_unstructured(by_id[baseline], sorted(sparse, key=lambda r: r["config"]["amount"])),
                       document)


def plot_backbones(document: Mapping[str, Any]) -> "Figure":
    """Lesson 05's trade-off figure from a results document (``backbones.tradeoff_rows`` and ``plot_tradeoffs``).

    Raises:
        MissingRecordsError: the document has no backbone study (its teacher's ONNX Runtime record and one trunk).
    """
    from compresskit.harness.backbones import plot_tradeoffs, tradeoff_rows

    records = records_of(document)
    teacher = next((record for record in records if record["id"] == "backbones/teacher/ort-fp32"), None)
    rows = tradeoff_rows(records) if teacher is not None and teacher.get("map") is not None else []
    if not rows:
        raise MissingRecordsError("no backbone study in these records (backbones/teacher/ort-fp32 and the trunks' "
                                  "ort-fp32 records); run `compresskit reproduce --only backbones`")
    return add_caption(plot_tradeoffs(rows, teacher["map"]), document)


# file name -> how to draw it from a results document (raises MissingRecordsError when its records are absent).
FIGURES: dict[str, Callable[[Mapping[str, Any]], "Figure"]] = {
    "pareto_latency.png": _pareto("latency"), "pareto_size.png": _pareto("size"), "pareto_macs.png": _pareto("macs"),
    "sparsity.png": plot_sparsity, "calibration.png": plot_calibration_sweep, "distillation.png": plot_distillation,
    "backbones.png": plot_backbones, "combined.png": plot_stages,
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
