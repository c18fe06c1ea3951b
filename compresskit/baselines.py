"""Training, evaluating and benchmarking the preset detectors: what ``compresskit train|evaluate|bench`` run.

Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from compresskit.data import load_split
from compresskit.data.files import atomic_write_json
from compresskit.engine import (VAL_SUBSET_IMAGES, TrainConfig, evaluate, fit, is_main_process, make_loader,
                                val_subset)
from compresskit.measure import environment_stamp
from compresskit.models import EMBEDDED_PRESETS, build_detector, load_checkpoint, save_checkpoint
from compresskit.settings import seed_everything

# Recipes that produced the shipped checkpoints; `compresskit train --preset NAME` reruns them exactly.
TRAIN_RECIPES: dict[str, TrainConfig] = {
    "teacher": TrainConfig(epochs=14, batch_size=16, lr=2e-3, eval_every=2),
    "student": TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2),
}
def train_preset(name: str, out_dir: Path | str, data_dir: Path | str | None = None,
                 config: TrainConfig | None = None, max_iters_per_epoch: int | None = None,
                 progress: bool = True) -> Path:
    """Train preset ``name`` from scratch on the embedded dataset (or ``data_dir``) and write a checkpoint.

    Writes ``out_dir/NAME.pt`` (fp16 weights, architecture spec, label map, metadata) and ``out_dir/NAME.json``
    (the metadata alone). The recorded mAPs are measured on the fp16 weights as shipped, after reloading them.

    Returns:
        Path of the checkpoint.
    """
    config = config or TRAIN_RECIPES[name]
    out_dir = Path(out_dir)
    seed_everything(config.seed)
    train_set, val_set = load_split("train", data_dir), load_split("val", data_dir)
    spec = replace(EMBEDDED_PRESETS[name], num_classes=train_set.label_map.num_classes)
    model = build_detector(spec)
    val_loader = make_loader(val_set, batch_size=8, train=False)
    started = time.perf_counter()
    result = fit(model, train_set, val_loader, config, out_dir / f"{name}-run", max_iters_per_epoch=max_iters_per_epoch,
                 progress=progress)
    wall_seconds = time.perf_counter() - started
    checkpoint = out_dir / f"{name}.pt"
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return checkpoint
    meta = {"preset": name, "train_config": asdict(config), "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(wall_seconds, 1), "history": result["history"],
            "command": "compresskit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith(
                "compresskit") else None,
            "seed": config.seed, "environment": environment_stamp()}
    save_checkpoint(checkpoint, model, spec, train_set.label_map, meta=meta, half=True)
    shipped, label_map, _ = load_checkpoint(checkpoint)
    meta["val_metrics"] = evaluate(shipped, val_loader, label_map, progress=progress)
    meta["val_subset"] = {"images": VAL_SUBSET_IMAGES,
                          "metrics": evaluate(shipped, make_loader(val_subset(val_set), 8, train=False), label_map,
                                              progress=progress)}
    save_checkpoint(checkpoint, shipped, spec, train_set.label_map, meta=meta, half=True)
    atomic_write_json(out_dir / f"{name}.json", meta, indent=1)
    return checkpoint


def ship(checkpoint_dir: Path | str, names: tuple[str, ...] = ("teacher", "student")) -> None:
    """Copy trained checkpoints and their metadata into the package (maintainers only)."""
    target = Path(__file__).parent / "checkpoints"
    target.mkdir(exist_ok=True)
    for name in names:
        for suffix in (".pt", ".json"):
            shutil.copyfile(Path(checkpoint_dir) / f"{name}{suffix}", target / f"{name}{suffix}")


def evaluate_preset(name: str, data_dir: Path | str | None = None, checkpoint: Path | str | None = None,
                    progress: bool = True) -> dict:
    """mAP (overall and by size), params and MACs of a shipped (or given) preset on a val split."""
    from compresskit.measure import count_macs, count_params
    from compresskit.models import load_preset
    from compresskit.models.core import DetectorCore, example_batch

    model, label_map, meta = load_preset(name, checkpoint)
    val_set = load_split("val", data_dir, label_map=label_map)
    metrics = evaluate(model, make_loader(val_set, batch_size=8, train=False), label_map, progress=progress)
    return {"preset": name, **metrics, "params": count_params(model),
            "macs": count_macs(DetectorCore(model), example_batch(model.transform.min_size[0])),
            "images": len(val_set)}


def baseline_records(val_loader=None, runs: int = 30, progress: bool = True,
                     lesson: str = "01_baseline_detectors") -> list[dict]:
    """The baseline records of DESIGN section 7: both presets, torch eager and ONNX Runtime fp32, one run.

    The teacher's eager record is the baseline of every other record here.
    """
    from compresskit.bench import measure_variant
    from compresskit.data import profile_split
    from compresskit.models import load_detector

    records = []
    for name in ("teacher", "student"):
        model, label_map, meta = load_detector(name)
        loader = val_loader or make_loader(profile_split("val", label_map=label_map), batch_size=8, train=False)
        for runtime, suffix in (("torch-eager", "eager"), ("onnxruntime", "ort-fp32")):
            record_id = f"baseline/{name}/{suffix}"
            baseline = None if record_id == "baseline/teacher/eager" else "baseline/teacher/eager"
            records.append(measure_variant(
                model, record_id=record_id, lesson=lesson, technique="baseline", model=name, val_loader=loader,
                label_map=label_map, runtime=runtime, variant=f"shipped {name}, fp32, {runtime}", baseline=baseline,
                runs=runs, train_seconds=meta.get("train_seconds"), config={"preset": name, "source": meta.get(
                    "command") or "torchvision COCO weights"},
                progress=progress))
    return records


def bench_baselines(json_path: Path | str | None = None, reports: Path | str | None = None) -> list[dict]:
    """Measure the baseline records, write them to the results file, print a table; ``compresskit bench``."""
    from compresskit.report import format_records_table, write_records

    records = baseline_records()
    written = write_records(records, reports_dir=reports)
    print(format_records_table(records))
    print(f"records written to {written}")
    if json_path:
        atomic_write_json(json_path, records, indent=1)
    return records
