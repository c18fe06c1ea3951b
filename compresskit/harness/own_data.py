"""The compression study on a detector fine-tuned on your own dataset (lesson 07, ``compresskit study``).

The same techniques and the same records as the lessons, applied to any kit checkpoint and the kit-layout dataset
it was trained on (``compresskit data split`` writes that layout): the detector as it is (torch eager and ONNX
Runtime fp32), static int8 in ONNX Runtime, structured channel pruning with a short fine-tune on the dataset's
train split, and the pruned detector in int8 (pruning and quantization combined). Every variant is timed
interleaved with the unpruned fp32 detector of the same runtime, measured in the same run.
Introduced in ``07_your_own_dataset.ipynb``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import tempfile
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
        int8_runtime: ``onnxruntime`` (QDQ int8, records ``.../ort-int8``), ``auto`` (every int8 runtime whose
            core runs images of any size, timed against the ONNX Runtime fp32 core; the fastest within
            ``max_map_drop`` points is marked ``chosen``; records ``.../int8/<runtime>-int8``) or one such runtime
            by name (e.g. ``openvino``).
        max_map_drop: ``auto``'s budget in mAP points against the unpruned fp32 detector in ONNX Runtime.
    """

    prune_ratio: float = 0.5
    finetune_steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    calibration_images: int = 32
    val_images: int | None = None
    runs: int = 30
    seed: int = 0
    int8_runtime: str = "onnxruntime"
    max_map_drop: float = 1.0

    def __post_init__(self) -> None:
        from compresskit.harness.auto_int8 import AUTO, check_budget, int8_runtimes

        usable = int8_runtimes(any_shape=True)  # an own dataset's images come in many sizes
        if self.int8_runtime != AUTO and self.int8_runtime not in usable:
            raise ConfigError(f"int8_runtime must be auto or one of {', '.join(usable)} (runtimes whose int8 core "
                              f"runs images of any size), got {self.int8_runtime!r}")
        check_budget(self.max_map_drop)
        if not 0.0 < self.prune_ratio < 1.0:
            raise ConfigError(f"prune_ratio must be in (0, 1), got {self.prune_ratio!r}")
        for name in ("finetune_steps", "batch_size", "calibration_images", "runs"):
            value = getattr(self, name)
            lowest = 0 if name == "finetune_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ConfigError(f"{name} must be an integer >= {lowest}, got {value!r}")


def dataset_study(checkpoint: Path | str, data_dir: Path | str, out: Path | str,
                  config: DatasetStudyConfig | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = print, restart: bool = False) -> Study:
    """Measure a checkpoint and its compressed variants on its own dataset; write records and Pareto figures.

    Each record is written to ``out/results.json`` as soon as it is measured, and the pruned detector's fine-tune
    keeps a checkpoint per epoch in ``out/work/``: an interrupted study, run again with the same checkpoint,
    dataset and settings, keeps the records it finished and goes on from there.

    Args:
        checkpoint: a kit checkpoint (``compresskit train ... --data DIR`` writes one), unchanged by the study.
        data_dir: the kit-layout dataset (``annotations/instances_{train,val}.json``) it was trained on; its
            labels are read through the checkpoint's label map, so mAP is reported per the dataset's category ids.
        out: folder for ``results.json`` (merged: other records in it are kept), ``figures/``, the ONNX files in
            ``artifacts/`` and, while the study runs, the fine-tune's checkpoints in ``work/``.
        config: see :class:`DatasetStudyConfig`.
        progress: progress bars for evaluation and the fine-tune.
        log: called with one line per measured record and a table at the end (None: silent).
        restart: measure every variant again, replacing this study's records in ``out`` whatever settings made
            them (without it, records of other settings are refused rather than mixed with new ones).

    Returns:
        The :class:`Study`; its ``records`` are what was written.

    Raises:
        ConfigError: ``out`` holds records of this detector's study made with other settings (and not ``restart``).
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
    shared = {"checkpoint": checkpoint.name, "dataset": data_dir.name, "study": asdict(config),
              "inputs": _inputs_identity(checkpoint, data_dir)}
    prefix = f"custom/{name}/"
    earlier = {} if restart else _earlier_records(out, prefix, shared)
    study = Study(lesson=LESSON, model=name, profile="custom", runs=config.runs, progress=progress,
                  val_loader=make_loader(val_set, batch_size=8, train=False), label_map=label_map,
                  artifacts=out / "artifacts", log=log, earlier=earlier,
                  on_record=lambda record: write_records([record], reports_dir=out))
    if earlier and log is not None:
        log(f"resuming the study in {out}: {len(earlier)} records were finished by an earlier run with the same "
            "settings and are kept (--restart, or restart=True, measures them again)")
    try:
        _measure_variants(study, detector, name, data_dir, label_map, config, shared, out, progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"{len(study.records)} records of this study are kept in {out / 'results.json'}; "
                                "rerun the same command to resume") from None
    shutil.rmtree(out / "work", ignore_errors=True)  # every record is written: the fine-tunes' checkpoints are spent
    write_study([], out)
    if log is not None:
        log(format_records_table(study.records))
    return study


def _measure_variants(study: Study, detector, name: str, data_dir: Path, label_map, config: DatasetStudyConfig,
                      shared: dict, out: Path, progress: bool) -> None:
    prefix = f"custom/{name}/"
    base = study.measure(detector, f"{prefix}eager", technique="baseline", config=shared,
                         variant=f"{name} as fine-tuned on {data_dir.name}, fp32")
    calibration_set = load_split("train", data_dir, train_transforms=False, label_map=label_map)
    quant_config = OrtQuantConfig(calibration_images=min(config.calibration_images, len(calibration_set)),
                                  fixed_shape=False, seed=config.seed)  # own images come in many shapes
    ort_fp32 = study.measure(detector, f"{prefix}ort-fp32", technique="baseline", runtime="onnxruntime",
                             variant="ONNX Runtime fp32 core", config=shared)
    _measure_int8(study, detector, calibration_set, quant_config, f"{prefix}ort-int8", ort_fp32["id"],
                  "static int8", shared, out, config=config)
    # Pruning's fine-tune is extra training: an unpruned copy gets the same steps (the control), and the pruned
    # variants are compared with it, so a table never credits pruning with what more training did.
    base_eager, base_ort = base["id"], ort_fp32["id"]
    pruned_ids = [f"{prefix}structured/{suffix}" for suffix in ("eager", "ort-fp32")]
    pruned_int8_ids = _int8_ids(config, f"{prefix}structured/")
    steps = config.finetune_steps
    budget = {"finetune_steps": steps, "finetune_batch_size": config.batch_size if steps else None}
    if steps:
        control_ids = [f"{prefix}finetuned/{suffix}" for suffix in ("eager", "ort-fp32")]
        # Needed again while a pruned variant is still to be timed against it (a kept run resumes in no time).
        control, control_seconds = _unless_kept(
            study, control_ids + pruned_ids + pruned_int8_ids, detector,
            lambda: finetune(copy.deepcopy(detector), data_dir, label_map, config, progress=progress,
                             work_dir=out / "work" / f"control-{_settings_key(shared)}"))
        control_text = f"unpruned, the same {steps} fine-tuning steps (control)"
        base_eager = study.measure(control, control_ids[0], technique="baseline", baseline=base["id"],
                                   variant=control_text, train_seconds=control_seconds,
                                   config={**shared, **budget})["id"]
        base_ort = study.measure(control, control_ids[1], technique="baseline", runtime="onnxruntime",
                                 baseline=ort_fp32["id"], variant=f"{control_text}, ONNX Runtime fp32",
                                 train_seconds=control_seconds, config={**shared, **budget})["id"]
    pruned, train_seconds = _unless_kept(
        study, pruned_ids + pruned_int8_ids, detector,
        lambda: prune_and_recover(detector, data_dir, label_map, config, progress=progress,
                                  work_dir=out / "work" / f"pruned-{_settings_key(shared)}"))
    pruned_text = f"{config.prune_ratio:.0%} channels pruned, {steps} fine-tuning steps"
    study.measure(pruned, pruned_ids[0], technique="structured_pruning", baseline=base_eager,
                  variant=pruned_text, config={**shared, **budget}, train_seconds=train_seconds)
    study.measure(pruned, pruned_ids[1], technique="structured_pruning",
                  runtime="onnxruntime", baseline=base_ort, variant=f"{pruned_text}, ONNX Runtime fp32",
                  config={**shared, **budget}, train_seconds=train_seconds)
    _measure_int8(study, pruned, calibration_set, quant_config, f"{prefix}structured/ort-int8",
                  base_ort, f"{pruned_text}, then static int8", {**shared, **budget}, out,
                  technique="combined", train_seconds=train_seconds, config=config)


def _unless_kept(study: Study, record_ids: list[str], stand_in, make):
    """``make()`` (a fine-tune: ``(detector, seconds)``) unless every record it feeds was kept from an earlier
    run; then ``(stand_in, None)``, which nothing measures (kept records are not measured again)."""
    if all(study.is_kept(record_id) for record_id in record_ids):
        return stand_in, None
    return make()


def _inputs_identity(checkpoint: Path, data_dir: Path) -> dict:
    """Content hashes of the checkpoint and the dataset's annotation files: a study resumes only on the same ones
    (a retrained checkpoint of the same name, or a re-split dataset, starts the study again)."""
    def digest(path: Path) -> str:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        return hasher.hexdigest()[:16]

    return {"checkpoint_sha256": digest(checkpoint),
            **{f"{split}_annotations_sha256": digest(data_dir / "annotations" / f"instances_{split}.json")
               for split in ("train", "val")}}


def _settings_key(shared: dict) -> str:
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


def _earlier_records(out: Path, prefix: str, shared: dict) -> dict[str, dict]:
    """This study's records already in ``out/results.json``, by id, when an earlier run made them with the same
    settings; a :class:`ConfigError` when some were made with other settings (resuming would mix the two)."""
    expected = json.loads(json.dumps(shared))  # as the records hold it, after a JSON round trip
    found = [record for record in read_results(out)["records"] if record["id"].startswith(prefix)]
    other = [record for record in found
             if {key: (record.get("config") or {}).get(key) for key in expected} != expected]
    if other:
        settings = (other[0].get("config") or {})
        differing = sorted(key for key in expected if settings.get(key) != expected[key])
        details = ", ".join(_describe_difference(key, settings.get(key), expected[key]) for key in differing)
        raise ConfigError(f"{out} already holds this study of {prefix.split('/')[1]} made with other settings "
                          f"({details}); rerun with those settings to resume it, add --restart (restart=True) to "
                          "measure it again with these (its records are replaced), or choose another --out")
    return {record["id"]: record for record in found}


def _describe_difference(key: str, theirs, ours) -> str:
    if isinstance(theirs, dict) and isinstance(ours, dict):
        keys = sorted(name for name in set(theirs) | set(ours) if theirs.get(name) != ours.get(name))
        return "; ".join(f"{name} {theirs.get(name)!r} there, {ours.get(name)!r} now" for name in keys)
    return f"{key} {theirs!r} there, {ours!r} now"


def _int8_ids(config: DatasetStudyConfig, prefix: str) -> list[str]:
    """The int8 records' ids under ``prefix`` (``custom/<name>/`` or ``custom/<name>/structured/``)."""
    from compresskit.harness.auto_int8 import AUTO, int8_path, int8_runtimes

    if config.int8_runtime == "onnxruntime":
        return [f"{prefix}ort-int8"]
    runtimes = int8_runtimes(any_shape=True) if config.int8_runtime == AUTO else (config.int8_runtime,)
    return [f"{prefix}int8/{int8_path(runtime).label}-int8" for runtime in runtimes]


def _measure_int8(study: Study, detector, calibration_set, quant_config: OrtQuantConfig, record_id: str,
                  baseline: str, variant: str, shared: dict, out: Path, technique: str = "static_ptq",
                  train_seconds: float | None = None, config: DatasetStudyConfig | None = None) -> dict | None:
    """``detector``'s int8 core(s) against ``baseline``: ONNX Runtime QDQ as ``record_id``, or, with
    ``config.int8_runtime`` another runtime or ``auto``, each candidate as ``<prefix>int8/<label>-int8`` (the
    prefix is ``record_id`` without its last part) and ``auto``'s pick marked in its record."""
    if config is not None and config.int8_runtime != "onnxruntime":
        from compresskit.harness.auto_int8 import AUTO, Int8Settings, int8_runtimes, measure_auto

        prefix = record_id.rsplit("/", 1)[0]
        runtimes = int8_runtimes(any_shape=True) if config.int8_runtime == AUTO else (config.int8_runtime,)
        settings = Int8Settings(calibration_images=quant_config.calibration_images, seed=quant_config.seed,
                                threads=study.threads, any_shape=True)
        _, picked = measure_auto(study, detector, calibration_set, out / "artifacts" / record_id.replace("/", "-"),
                                 baseline, f"{prefix}/int8", config.max_map_drop, runtimes=runtimes,
                                 settings=settings, technique=technique, variant=f"{variant}, ",
                                 config={**shared})
        return picked
    if study.is_kept(record_id):
        return study.keep(record_id)  # no variant is timed against an int8 one: nothing to rebuild
    file_name = record_id.replace("/", "-") + ".onnx"
    quantized = quantize_core_onnx(detector, calibration_set, quant_config, out / "artifacts" / file_name)
    return study.measure(detector, record_id, technique=technique, runtime="onnxruntime", baseline=baseline,
                         core=OnnxCore(quantized.int8_path, threads=study.threads), train_seconds=train_seconds,
                         variant=f"{variant} (ONNX Runtime QDQ), {quantized.activations} activations, "
                                 f"{quantized.calibration_images} calibration images",
                         config={**shared, "quantization": quantized.as_dict()})


def prune_and_recover(detector, data_dir: Path, label_map, config: DatasetStudyConfig, progress: bool = False,
                      work_dir: Path | None = None):
    """A pruned copy of ``detector`` fine-tuned ``config.finetune_steps`` steps on the dataset's train split.

    Args:
        work_dir: the fine-tune's run folder (a checkpoint per epoch; a rerun resumes from it), which must belong
            to this detector and these settings; None: a temporary folder, removed afterwards.

    Returns:
        ``(pruned detector in eval mode, fine-tune seconds)``; ``detector`` is untouched.
    """
    pruned = prune_structured_(copy.deepcopy(detector), StructuredConfig(ratio=config.prune_ratio))
    return finetune(pruned, data_dir, label_map, config, progress=progress, work_dir=work_dir)


def finetune(detector, data_dir: Path, label_map, config: DatasetStudyConfig, progress: bool = False,
             work_dir: Path | None = None):
    """Fine-tune ``detector`` in place for ``config.finetune_steps`` steps on the dataset's train split: the
    pruned detector's recovery, and the same budget for the unpruned control it is compared with.

    Returns:
        ``(detector in eval mode, training seconds)``.
    """
    seconds = 0.0
    if config.finetune_steps:
        train_set = load_split("train", data_dir, label_map=label_map)
        steps_per_epoch = max(1, -(-len(train_set) // config.batch_size))
        epochs = -(-config.finetune_steps // steps_per_epoch)
        recipe = TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                             warmup_iters=min(50, config.finetune_steps // 5), workers=0)
        # Nothing is shipped: the study measures the fine-tuned detector itself, so the run needs no val split.
        # The engine resumes from the checkpoint it finds in the folder, so the folder is keyed by the settings.
        with contextlib.ExitStack() as stack:
            folder = work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="compresskit-study-"))
            result = train_detector(detector, Splits(train_set), recipe, folder, progress=progress,
                                    log=lambda message: None, max_iters_per_epoch=-(-config.finetune_steps // epochs))
        seconds = result["train_seconds"]  # summed over resumed runs
    return detector.eval(), round(seconds, 1)


def write_study(records, out: Path | str) -> Path:
    """Merge ``records`` (none: they are written already) into ``out/results.json`` and redraw
    ``out/figures/pareto_{latency,size,macs}.png`` from everything that file now holds. Returns the results file."""
    out = Path(out)
    results = write_records(records, reports_dir=out) if records else out / "results.json"
    everything = read_results(results)["records"]
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for axis in PARETO_AXES:
        figure = plot_pareto(everything, x=axis, title=f"mAP against {axis}, on your dataset")
        figure.savefig(figures / f"pareto_{axis}.png", dpi=120)
    return results
