"""The baseline study (lesson 01, ``compresskit bench``): teacher and student, torch eager and ONNX Runtime fp32.

Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from compresskit.harness.loading import load_for_study, val_loader
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.variant import Study

LESSON = "01_baseline_detectors"


def baseline_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                   threads: int | None = None, models: tuple[str, ...] = ("teacher", "student"),
                   progress: bool = False, log: Callable[[str], None] | None = None, lesson: str = LESSON,
                   reuse: ReuseCache | None = None) -> Study:
    """Measure each preset in torch eager and ONNX Runtime fp32, in one run.

    The teacher's eager record is the study's baseline: the student's eager record is timed against it; each
    ONNX Runtime record is timed against the eager record of the same detector.

    Args:
        profile: data profile (default ``COMPRESSKIT_PROFILE``); detector and data both come from it.
        val_images: evaluate on the first N val images only (None: the whole val split).
        runs: timed runs per record (pairs for a paired comparison); threads: torch and ONNX Runtime threads.
        models: presets to measure, the first being the baseline.
    Returns:
        The :class:`Study`; its ``records`` are the baseline records.
    """
    first = load_for_study(models[0], profile)
    study = Study(lesson=lesson, model=first.name, profile=first.profile, val_loader=val_loader(first, val_images),
                  label_map=first.label_map, runs=runs, threads=threads, progress=progress, log=log, reuse=reuse)
    for index, name in enumerate(models):
        loaded = first if index == 0 else load_for_study(name, first.profile)
        source = loaded.meta.get("command") or ("torchvision COCO weights" if loaded.profile == "coco" else None)
        common = {"technique": "baseline", "model": name, "label_map": loaded.label_map,
                  "train_seconds": loaded.meta.get("train_seconds"), "config": {"preset": name, "source": source}}
        eager = study.measure(loaded.model, f"baseline/{name}/eager", variant=f"shipped {name}, fp32, torch eager",
                              **common)
        study.measure(loaded.model, f"baseline/{name}/ort-fp32", runtime="onnxruntime", baseline=eager["id"],
                      variant=f"shipped {name}, fp32, ONNX Runtime", **common)
    return study


def bench_baselines(json_path: Path | str | None = None, reports: Path | str | None = None,
                    runs: int = 30) -> list[dict]:
    """``compresskit bench``: measure the baseline records, write them to the results file, print a table."""
    from compresskit.data.files import atomic_write_json
    from compresskit.report import format_records_table, write_records

    print("measuring teacher and student (torch eager, ONNX Runtime fp32) on the val split ...", flush=True)
    records = baseline_study(runs=runs, progress=True, log=print).records
    written = write_records(records, reports_dir=reports)
    print(format_records_table(records))
    print(f"records written to {written.resolve()}")
    if json_path:
        atomic_write_json(json_path, records, indent=1)
    return records
