"""Measure one detector variant end to end and turn it into a results record.

Every lesson and command measures the same way (DESIGN section 7): COCO mAP through the kit's evaluator, params
and non-zero params of the model, MACs of the exportable core on one 320x320 image, the size of the artifact a
user would ship (state_dict for torch, the .onnx file for ONNX Runtime) raw and gzipped, and end-to-end latency
(transform + core + post-processing) at batch 1 on a real val image with a fixed thread count.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from compresskit.engine import evaluate
from compresskit.measure import count_macs, count_nonzero_params, count_params, measure_latency, serialized_size
from compresskit.models.core import CoreDetector, DetectorCore, OnnxCore, example_batch, export_core_onnx
from compresskit.report import make_record
from compresskit.settings import reports_dir


def artifact_dir() -> Path:
    """Where exported files (ONNX cores) of the current run go: beside the results, never in the source tree."""
    return reports_dir() / "artifacts"


def measure_variant(detector: nn.Module, *, record_id: str, lesson: str, technique: str, model: str,
                    val_loader, label_map, runtime: str = "torch-eager", variant: str = "",
                    baseline: str | None = None, threads: int = 2, runs: int = 30, core: Any = None,
                    train_seconds: float | None = None, config: Any = None, progress: bool = True) -> dict:
    """Evaluate and measure ``detector`` as one record (see module docstring). Puts it in eval mode; its weights
    are not touched.

    Args:
        runtime: ``torch-eager`` runs the detector's own core; ``onnxruntime`` exports the core to ONNX first
            (unless ``core`` is given) and runs it in an ONNX Runtime session with ``threads`` threads.
        core: a ready core callable (e.g. an ``OnnxCore`` of a quantized file) to evaluate instead.
    Returns:
        The record (a dict, DESIGN section 5); write it with ``report.write_records``.
    """
    detector.eval()
    float_core = DetectorCore(detector)
    size = serialized_size(detector)
    if runtime == "onnxruntime" and core is None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", record_id)
        onnx_path = export_core_onnx(float_core, artifact_dir() / f"{safe}.onnx")
        core = OnnxCore(onnx_path, threads=threads)
    if isinstance(core, OnnxCore):
        size = serialized_size(core.path)
    runner = CoreDetector(detector, core)
    metrics = evaluate(runner, val_loader, label_map, progress=progress)
    image = val_loader.dataset[0][0]
    latency = measure_latency(runner, [image], runs=runs, threads=threads)
    return make_record(id=record_id, lesson=lesson, technique=technique, model=model, runtime=runtime,
                       metrics=metrics, variant=variant, baseline=baseline, params=count_params(detector),
                       nonzero_params=count_nonzero_params(detector),
                       macs=count_macs(float_core, example_batch(tuple(image.shape[-2:]))), size=size,
                       latency=latency.as_record(tuple(image.shape[-2:])), train_seconds=train_seconds,
                       config=config)


class Study:
    """Shared settings of one lesson's measurements, so each variant is one short call.

    The first record measured becomes the baseline of the ones after it (unless a call names another), which is
    how DESIGN section 5 wants comparisons made: against a baseline measured in the same run, on the same data.
    """

    def __init__(self, lesson: str, model: str, val_loader, label_map, threads: int = 2, runs: int = 30,
                 progress: bool = False) -> None:
        self.lesson, self.model, self.val_loader, self.label_map = lesson, model, val_loader, label_map
        self.threads, self.runs, self.progress = threads, runs, progress
        self.baseline: str | None = None
        self.records: list[dict] = []

    def measure(self, detector: nn.Module, record_id: str, technique: str, runtime: str = "torch-eager",
                variant: str = "", baseline: str | None = None, **extra) -> dict:
        """Measure ``detector`` (see :func:`measure_variant`), keep the record, and return it."""
        record = measure_variant(detector, record_id=record_id, lesson=self.lesson, technique=technique,
                                 model=self.model, val_loader=self.val_loader, label_map=self.label_map,
                                 runtime=runtime, variant=variant, baseline=baseline or self.baseline,
                                 threads=self.threads, runs=self.runs, progress=self.progress, **extra)
        self.baseline = self.baseline or record_id
        self.records.append(record)
        return record
