"""Training and evaluating the preset detectors, and shipping any trained detector: what ``compresskit train`` and
``compresskit evaluate`` run, and the one save-reload-evaluate routine every trained or fine-tuned checkpoint
goes through (:func:`ship_checkpoint`). Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn

from compresskit.data import load_split, require_clean_layout
from compresskit.data.dataset import LabelMap
from compresskit.data.files import atomic_write_json
from compresskit.engine.evaluation import VAL_SUBSET_IMAGES, evaluate, val_subset
from compresskit.engine.loop import TrainConfig, fit, is_main_process, make_loader
from compresskit.models import (EMBEDDED_PRESETS, DetectorSpec, build_detector, load_checkpoint, save_checkpoint,
                                save_torchvision_checkpoint)
from compresskit.settings import seed_everything

# Recipes that produced the shipped checkpoints; `compresskit train --preset NAME` reruns them exactly.
TRAIN_RECIPES: dict[str, TrainConfig] = {
    "teacher": TrainConfig(epochs=14, batch_size=16, lr=2e-3, eval_every=2),
    "student": TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2),
}
EVAL_BATCH_SIZE = 8


def console_command() -> str | None:
    """The ``compresskit ...`` command line of this process when it runs the console script, else None."""
    program = Path(sys.argv[0])
    run_as_module = program.name == "__main__.py" and program.parent.name in ("compresskit", "cli")
    if program.stem != "compresskit" and not run_as_module:  # `python -m compresskit` runs the same command
        return None
    return " ".join(["compresskit", *(shlex.quote(argument) for argument in sys.argv[1:])])


def training_device_name() -> str:
    """What a run trains on: the CUDA device's name, else the CPU model (``fit`` picks the GPU when there is one)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    # measure sits above the engine but never imports it, so this cannot form a cycle.
    from compresskit.measure import environment_stamp

    return str(environment_stamp()["cpu"])


def ship_checkpoint(path: Path | str, model: nn.Module, spec: DetectorSpec | str, label_map: LabelMap, meta: dict,
                    val_set, *, half: bool = True, progress: bool = True) -> Path:
    """Write a trained detector as a checkpoint whose recorded mAPs are those of the weights as shipped.

    Writes the checkpoint, reloads it (fp16 weights when ``half``), evaluates the reloaded detector on all of
    ``val_set`` (``meta["val_metrics"]``) and on its fixed first slice (``meta["val_subset"]``), then rewrites
    the checkpoint with that metadata and writes ``path.with_suffix(".json")`` (the metadata alone). Call it on
    the main process only (see :func:`is_main_process`).

    Args:
        path: the ``.pt`` file to write.
        model: the trained detector, built from ``spec`` (pruned or not).
        spec: its design: a :class:`DetectorSpec` for the kit's FCOS, or the torchvision model name of a
            torchvision detector whose classifier is ``label_map``'s width (see
            :func:`~compresskit.models.save_torchvision_checkpoint`).
        label_map: its label <-> category-id mapping.
        meta: JSON-able training metadata; copied, then ``trained_on`` (unless given), ``command``,
            ``environment``, ``val_metrics`` and ``val_subset`` are added.
        val_set: the validation dataset.
        half: store fp16 weights (half the file; measured mAP moves by well under 0.001).
        progress: show progress bars.

    Returns:
        ``path``.
    """
    # measure sits above the engine in the import order, but it only counts things and never imports the
    # engine, so importing it here cannot form a cycle; at module level it would load it for every engine user.
    from compresskit.measure import environment_stamp

    path = Path(path)
    meta = {"trained_on": training_device_name(), **meta, "command": console_command(),
            "environment": environment_stamp()}
    _save(path, model, spec, label_map, meta, half)
    shipped, shipped_map, _ = load_checkpoint(path)
    full = make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False)
    meta["val_metrics"] = evaluate(shipped, full, shipped_map, progress=progress)
    subset = make_loader(val_subset(val_set), batch_size=EVAL_BATCH_SIZE, train=False)
    meta["val_subset"] = {"images": VAL_SUBSET_IMAGES,
                          "metrics": evaluate(shipped, subset, shipped_map, progress=progress)}
    _save(path, shipped, spec, shipped_map, meta, half)
    atomic_write_json(path.with_suffix(".json"), meta, indent=1)
    return path


def _save(path: Path, model: nn.Module, spec: DetectorSpec | str, label_map: LabelMap, meta: dict,
          half: bool) -> Path:
    """The checkpoint kind of ``spec``: the kit's FCOS for a :class:`DetectorSpec`, else a torchvision model name."""
    if isinstance(spec, str):
        return save_torchvision_checkpoint(path, model, spec, label_map.num_classes, label_map, meta=meta, half=half)
    return save_checkpoint(path, model, spec, label_map, meta=meta, half=half)


INITS = ("scratch", "shipped", "coco-pretrained")


def _initial_detector(name: str, init: str, label_map: LabelMap) -> tuple[nn.Module, DetectorSpec | str, dict]:
    """The detector ``init`` starts preset ``name`` from, for ``label_map``'s categories.

    Returns:
        ``(detector, its design for :func:`ship_checkpoint`, init metadata)``.
    """
    if init == "coco-pretrained":
        return _coco_pretrained_detector(name, label_map)
    from compresskit.models import load_preset, transfer_weights_

    spec = replace(EMBEDDED_PRESETS[name], num_classes=label_map.num_classes)
    model = build_detector(spec)
    init_meta: dict = {"init": init}
    if init == "shipped":
        shipped, shipped_labels, _ = load_preset(name)
        transferred = transfer_weights_(model, shipped, same_categories=shipped_labels == label_map)
        init_meta.update({"kept_tensors": len(transferred["kept"]), "reinitialised": transferred["reinitialised"]})
    return model, spec, init_meta


def _coco_pretrained_detector(name: str, label_map: LabelMap) -> tuple[nn.Module, str, dict]:
    """The coco profile's detector for preset ``name`` (torchvision's, ``COCO_PRESETS[name]``) with a classifier
    for ``label_map``: every COCO-pretrained tensor that fits is kept, the class-sized ones start afresh.

    Raises:
        DownloadError: the pretrained weights are neither cached nor downloadable (its message says how to fix it).
    """
    from torchvision.models import get_model

    from compresskit.models import COCO_PRESETS, load_coco_pretrained, transfer_weights_

    model_name = COCO_PRESETS[name]
    # Built as load_checkpoint rebuilds it, so the shipped file loads strictly into the same architecture.
    model = get_model(model_name, weights=None, weights_backbone=None, num_classes=label_map.num_classes)
    pretrained, _ = load_coco_pretrained(name)
    # COCO's category slots never carry over, even for a COCO subset: its labels are contiguous, not COCO's ids.
    transferred = transfer_weights_(model, pretrained, same_categories=False)
    return model, model_name, {"init": "coco-pretrained", "torchvision_model": model_name,
                               "kept_tensors": len(transferred["kept"]),
                               "reinitialised": transferred["reinitialised"]}


def train_preset(name: str, out_dir: Path | str, data_dir: Path | str | None = None,
                 config: TrainConfig | None = None, max_iters_per_epoch: int | None = None,
                 progress: bool = True, init: str = "scratch") -> Path:
    """Train preset ``name`` on the embedded dataset (or ``data_dir``) and ship it.

    Writes ``out_dir/NAME.pt`` (fp16 weights, spec or torchvision model name, label map, metadata) and
    ``out_dir/NAME.json`` through :func:`ship_checkpoint`; the training run itself (resumable) lives in
    ``out_dir/NAME-run``.

    Args:
        name: an embedded preset (``teacher``, ``student``).
        out_dir: where the checkpoint is written.
        data_dir: a COCO-format dataset with train and val splits (default: the embedded dataset).
        config: the recipe (default: ``TRAIN_RECIPES[name]``).
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.
        init: ``scratch`` (seeded random weights); ``shipped``: start from the shipped checkpoint of ``name``,
            keeping every weight whose shape fits and re-initialising the class logits unless the dataset has
            exactly the shipped categories (see :func:`~compresskit.models.transfer_weights_`); or
            ``coco-pretrained``: fine-tune the coco profile's torchvision detector for ``name``
            (``COCO_PRESETS[name]``) from its COCO weights, its class-sized tensors re-initialised; needs
            ``data_dir`` and the cached (or downloadable) weights, and writes a torchvision checkpoint (see
            :func:`~compresskit.models.save_torchvision_checkpoint`). The checkpoint's label map is always the
            dataset's.

    Returns:
        Path of the checkpoint.
    """
    from compresskit.errors import ConfigError

    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {INITS}")
    if init == "coco-pretrained" and data_dir is None:
        raise ConfigError("--init coco-pretrained fine-tunes a COCO-pretrained detector on a dataset of your own: "
                          "give --data DIR. The embedded dataset has its own shipped detectors; use --init shipped")
    config = config or TRAIN_RECIPES[name]
    out_dir = Path(out_dir)
    if data_dir is not None:  # a dataset of your own: the check's messages, before any file is written
        require_clean_layout(data_dir)
    seed_everything(config.seed)
    train_set, val_set = load_split("train", data_dir), load_split("val", data_dir)
    model, design, init_meta = _initial_detector(name, init, train_set.label_map)
    val_loader = make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False)
    started = time.perf_counter()
    result = fit(model, train_set, val_loader, config, out_dir / f"{name}-run",
                 max_iters_per_epoch=max_iters_per_epoch, progress=progress)
    checkpoint = out_dir / f"{name}.pt"
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return checkpoint
    meta = {"preset": name, "train_config": asdict(config), "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(time.perf_counter() - started, 1), "history": result["history"],
            "seed": config.seed, **init_meta}
    return ship_checkpoint(checkpoint, model, design, train_set.label_map, meta, val_set, progress=progress)


def evaluate_preset(name: str, data_dir: Path | str | None = None, checkpoint: Path | str | None = None,
                    progress: bool = True) -> dict:
    """mAP (overall and by size), params and MACs of a shipped (or given) preset on a val split.

    Args:
        name: an embedded preset.
        data_dir: a COCO-format dataset with a val split (default: the embedded dataset).
        checkpoint: evaluate this checkpoint instead of the shipped one.
        progress: show a progress bar.

    Returns:
        ``{"preset", metric names..., "params", "macs", "images"}``.
    """
    # Counting lives in measure, above the engine; it never imports the engine, so this cannot form a cycle.
    from compresskit.measure import count_macs, count_params
    from compresskit.models import load_preset
    from compresskit.models.core import ExportableCore, example_batch

    model, label_map, _ = load_preset(name, checkpoint)
    val_set = load_split("val", data_dir, label_map=label_map)
    metrics = evaluate(model, make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False), label_map,
                       progress=progress)
    return {"preset": name, **metrics, "params": count_params(model),
            "macs": count_macs(ExportableCore(model), example_batch(model.transform.min_size[0])),
            "images": len(val_set)}
