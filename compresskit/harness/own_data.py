"""The compression study on a detector fine-tuned on your own dataset (lesson 07, ``compresskit study``).

The same techniques and the same records as the lessons, applied to any kit checkpoint and the kit-layout dataset
it was trained on (``compresskit data split`` writes that layout): the detector as it is (torch eager and ONNX
Runtime fp32), static int8 in ONNX Runtime, structured channel pruning with a short fine-tune on the dataset's
train split, and the pruned detector in int8 (pruning and quantization combined). Every variant is timed
interleaved with the unpruned fp32 detector of the same runtime, measured in the same run.
Introduced in ``07_your_own_dataset.ipynb``.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from compresskit.data import load_split, require_clean_layout
from compresskit.engine import Splits, TrainConfig, make_loader, train_detector
from compresskit.errors import ConfigError
from compresskit.harness.variant import Study
from compresskit.models import load_checkpoint
from compresskit.prune import StructuredConfig, prune_structured_
from compresskit.quantize.ort import OrtQuantConfig, quantize_core_onnx
from compresskit.report import format_records_table, plot_pareto, read_results, write_records
from compresskit.runtimes import OnnxCore

LESSON = "07_your_own_dataset"
PARETO_AXES = ("latency", "size", "macs")


@dataclass
class DatasetStudyConfig:
    """What :func:`dataset_study` applies; recorded in every record's config.

    Attributes:
        prune_ratio: share of channels removed from each prunable layer (``StructuredConfig.ratio``).
        finetune_steps: optimiser steps of the recovery fine-tune after pruning (0: measure the cut as it is).
        batch_size, lr: the fine-tune's batch and peak learning rate.
        calibration_images: train images that calibrate the int8 activation ranges (fewer if the split is small).
        val_images: evaluate on the first N val images only (None: the whole val split).
        runs: timed pairs per latency comparison (>= 30 for a reported number; fewer for a quick look).
        seed: fine-tune data order and calibration choice.
    """

    prune_ratio: float = 0.5
    finetune_steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    calibration_images: int = 32
    val_images: int | None = None
    runs: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.prune_ratio < 1.0:
            raise ConfigError(f"prune_ratio must be in (0, 1), got {self.prune_ratio!r}")
        for name in ("finetune_steps", "batch_size", "calibration_images", "runs"):
            value = getattr(self, name)
            lowest = 0 if name == "finetune_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ConfigError(f"{name} must be an integer >= {lowest}, got {value!r}")


def dataset_study(checkpoint: Path | str, data_dir: Path | str, out: Path | str,
                  config: DatasetStudyConfig | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = print) -> Study:
    """Measure a checkpoint and its compressed variants on its own dataset; write records and Pareto figures.

    Args:
        checkpoint: a kit checkpoint (``compresskit train ... --data DIR`` writes one), unchanged by the study.
        data_dir: the kit-layout dataset (``annotations/instances_{train,val}.json``) it was trained on; its
            labels are read through the checkpoint's label map, so mAP is reported per the dataset's category ids.
        out: folder for ``results.json`` (merged: a rerun replaces this study's records only), ``figures/`` and the
            ONNX files in ``artifacts/``.
        config: see :class:`DatasetStudyConfig`.
        progress: progress bars for evaluation and the fine-tune.
        log: called with one line per measured record and a table at the end (None: silent).

    Returns:
        The :class:`Study`; its ``records`` are what was written.
    """
    config = config or DatasetStudyConfig()
    checkpoint, data_dir, out = Path(checkpoint), Path(data_dir), Path(out)
    require_clean_layout(data_dir)  # bad data stops here, with the check's messages, before anything is written
    detector, label_map, meta = load_checkpoint(checkpoint)
    name = meta.get("preset") or checkpoint.stem
    val_set = load_split("val", data_dir, label_map=label_map)
    if config.val_images is not None:
        from torch.utils.data import Subset

        val_set = Subset(val_set, range(min(config.val_images, len(val_set))))
    study = Study(lesson=LESSON, model=name, profile="custom", runs=config.runs, progress=progress,
                  val_loader=make_loader(val_set, batch_size=8, train=False), label_map=label_map,
                  artifacts=out / "artifacts", log=log)
    shared = {"checkpoint": checkpoint.name, "dataset": data_dir.name, "study": asdict(config)}
    base = study.measure(detector, f"custom/{name}/eager", technique="baseline", config=shared,
                         variant=f"{name} as fine-tuned on {data_dir.name}, fp32")
    calibration_set = load_split("train", data_dir, train_transforms=False, label_map=label_map)
    quant_config = OrtQuantConfig(calibration_images=min(config.calibration_images, len(calibration_set)),
                                  fixed_shape=False, seed=config.seed)  # own images come in many shapes
    ort_fp32 = study.measure(detector, f"custom/{name}/ort-fp32", technique="baseline", runtime="onnxruntime",
                             variant="ONNX Runtime fp32 core", config=shared)
    _measure_int8(study, detector, calibration_set, quant_config, f"custom/{name}/ort-int8", ort_fp32["id"],
                  "static int8 (ONNX Runtime QDQ)", shared, out)
    pruned, train_seconds = prune_and_recover(detector, data_dir, label_map, config, progress=progress)
    pruned_text = f"{config.prune_ratio:.0%} channels pruned, {config.finetune_steps} fine-tuning steps"
    study.measure(pruned, f"custom/{name}/structured/eager", technique="structured_pruning", baseline=base["id"],
                  variant=pruned_text, config=shared, train_seconds=train_seconds)
    study.measure(pruned, f"custom/{name}/structured/ort-fp32", technique="structured_pruning",
                  runtime="onnxruntime", baseline=ort_fp32["id"], variant=f"{pruned_text}, ONNX Runtime fp32",
                  config=shared, train_seconds=train_seconds)
    _measure_int8(study, pruned, calibration_set, quant_config, f"custom/{name}/structured/ort-int8",
                  ort_fp32["id"], f"{pruned_text}, then static int8 (ONNX Runtime QDQ)", shared, out,
                  technique="combined", train_seconds=train_seconds)
    write_study(study.records, out)
    if log is not None:
        log(format_records_table(study.records))
    return study


def _measure_int8(study: Study, detector, calibration_set, quant_config: OrtQuantConfig, record_id: str,
                  baseline: str, variant: str, shared: dict, out: Path, technique: str = "static_ptq",
                  train_seconds: float | None = None) -> dict:
    file_name = record_id.replace("/", "-") + ".onnx"
    quantized = quantize_core_onnx(detector, calibration_set, quant_config, out / "artifacts" / file_name)
    return study.measure(detector, record_id, technique=technique, runtime="onnxruntime", baseline=baseline,
                         core=OnnxCore(quantized.int8_path, threads=study.threads), train_seconds=train_seconds,
                         variant=f"{variant}, {quantized.activations} activations, "
                                 f"{quantized.calibration_images} calibration images",
                         config={**shared, "quantization": quantized.as_dict()})


def prune_and_recover(detector, data_dir: Path, label_map, config: DatasetStudyConfig, progress: bool = False):
    """A pruned copy of ``detector`` fine-tuned ``config.finetune_steps`` steps on the dataset's train split.

    Returns:
        ``(pruned detector in eval mode, fine-tune seconds)``; ``detector`` is untouched.
    """
    pruned = prune_structured_(copy.deepcopy(detector), StructuredConfig(ratio=config.prune_ratio))
    started = time.perf_counter()
    if config.finetune_steps:
        train_set = load_split("train", data_dir, label_map=label_map)
        steps_per_epoch = max(1, -(-len(train_set) // config.batch_size))
        epochs = -(-config.finetune_steps // steps_per_epoch)
        recipe = TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                             warmup_iters=min(50, config.finetune_steps // 5), workers=0)
        # A fresh folder: the engine resumes from checkpoints it finds, and a stale run may have another shape.
        # Nothing is shipped: the study measures the pruned copy itself, so the run needs no val split either.
        with tempfile.TemporaryDirectory(prefix="compresskit-study-") as work_dir:
            train_detector(pruned, Splits(train_set), recipe, work_dir, progress=progress, log=lambda message: None,
                           max_iters_per_epoch=-(-config.finetune_steps // epochs))
    return pruned.eval(), round(time.perf_counter() - started, 1)


def write_study(records, out: Path | str) -> Path:
    """Merge ``records`` into ``out/results.json`` and redraw ``out/figures/pareto_{latency,size,macs}.png``
    from everything that file now holds. Returns the results file."""
    out = Path(out)
    results = write_records(records, reports_dir=out)
    everything = read_results(results)["records"]
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for axis in PARETO_AXES:
        figure = plot_pareto(everything, x=axis, title=f"mAP against {axis}, on your dataset")
        figure.savefig(figures / f"pareto_{axis}.png", dpi=120)
    return results
