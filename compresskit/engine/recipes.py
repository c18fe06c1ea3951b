"""Training and evaluating the preset detectors: what ``compresskit train --preset`` and ``compresskit evaluate``
run. A preset trains and ships through :func:`~compresskit.engine.train_and_ship` like every other recipe.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from torch import nn

from compresskit.data import load_split, require_clean_layout
from compresskit.data.dataset import LabelMap
from compresskit.engine.evaluation import evaluate
from compresskit.engine.loop import TrainConfig, make_loader
from compresskit.engine.shipping import EVAL_BATCH_SIZE, load_splits, train_and_ship
from compresskit.errors import ConfigError
from compresskit.measure import count_macs, count_params
from compresskit.models import (COCO_PRESETS, EMBEDDED_PRESETS, DetectorSpec, build_detector, carry_class_slots_,
                                coco_slots, coco_weights_verified, freeze_resnet_trunk_, load_coco_pretrained,
                                load_preset, transfer_weights_)
from compresskit.models.core import ExportableCore, core_input_size, example_batch
from compresskit.settings import seed_everything

# Recipes that produced the shipped checkpoints; `compresskit train --preset NAME` reruns them exactly.
TRAIN_RECIPES: dict[str, TrainConfig] = {
    "teacher": TrainConfig(epochs=14, batch_size=16, lr=2e-3, eval_every=2),
    "student": TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2),
}


INITS = ("scratch", "shipped", "coco-pretrained")


def initial_detector(name: str, init: str, label_map: LabelMap) -> tuple[nn.Module, DetectorSpec | str, dict]:
    """The detector ``init`` (one of :data:`INITS`, see :func:`train_preset`) starts preset ``name`` from, for
    ``label_map``'s categories; call :func:`~compresskit.settings.seed_everything` first, the weights drawn afresh
    follow it.

    Returns:
        ``(detector, its design for :func:`~compresskit.engine.ship_checkpoint`, init metadata)``.
    """
    if init == "coco-pretrained":
        return _coco_pretrained_detector(name, label_map)
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

    model_name = COCO_PRESETS[name]
    # Built as load_checkpoint rebuilds it, so the shipped file loads strictly into the same architecture.
    model = get_model(model_name, weights=None, weights_backbone=None, num_classes=label_map.num_classes)
    pretrained, pretrained_labels = load_coco_pretrained(name)
    transferred = transfer_weights_(model, pretrained, same_categories=False)
    # A subset of COCO's own categories (the coco profile's split) keeps what each class learned: its labels are
    # contiguous, so each slot is copied from the pretrained slot of the same category id. Any other dataset's
    # class slots start afresh.
    slots = coco_slots(label_map, pretrained_labels)
    carried = carry_class_slots_(model, pretrained, slots) if slots else []
    transferred = {"kept": transferred["kept"] + carried,
                   "reinitialised": [name for name in transferred["reinitialised"] if name not in carried]}
    frozen_trunk = freeze_resnet_trunk_(model)  # after the copy: the frozen statistics are the pretrained ones
    # False: the cached file is not torchvision's (a stand-in or a damaged copy), so what it learned means nothing.
    return model, model_name, {"init": "coco-pretrained", "torchvision_model": model_name,
                               "weights_verified": bool(coco_weights_verified(name)), "frozen_trunk": frozen_trunk,
                               "class_slots": "carried over by COCO category" if carried else "restarted",
                               "kept_tensors": len(transferred["kept"]),
                               "reinitialised": transferred["reinitialised"]}


def schedule_for(config: TrainConfig, train_images: int, min_steps: int,
                 max_iters_per_epoch: int | None = None) -> TrainConfig:
    """``config`` with enough epochs for at least ``min_steps`` optimiser steps on ``train_images`` images (never
    fewer epochs than it has): a recipe's epochs are sized for the embedded dataset, far more images than a small
    export of your own."""
    steps_per_epoch = max(1, -(-train_images // config.batch_size))
    if max_iters_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_iters_per_epoch)
    return replace(config, epochs=max(config.epochs, -(-min_steps // steps_per_epoch)))


def train_preset(name: str, out_dir: Path | str, data_dir: Path | str | None = None,
                 config: TrainConfig | None = None, max_iters_per_epoch: int | None = None,
                 progress: bool = True, init: str = "scratch", min_steps: int | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Train preset ``name`` on the embedded dataset (or ``data_dir``) and ship it.

    Writes ``out_dir/NAME.pt`` (fp16 weights, spec or torchvision model name, label map, metadata) and
    ``out_dir/NAME.json`` through :func:`~compresskit.engine.train_and_ship`; the training run itself (resumable)
    lives in ``out_dir/NAME-run``.

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
        min_steps: train at least this many optimiser steps on the dataset (:func:`schedule_for`; the command
            line passes ``settings.MIN_OWN_DATA_STEPS`` with ``--data`` and no ``--epochs``); None: ``config``'s
            epochs as they are.
        log: receives the schedule chosen and the notes on the chosen init.

    Returns:
        Path of the checkpoint.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {INITS}")
    if init == "coco-pretrained" and data_dir is None:
        raise ConfigError("--init coco-pretrained fine-tunes a COCO-pretrained detector on a dataset of your own: "
                          "give --data DIR. The embedded dataset has its own shipped detectors; use --init shipped")
    config = config or TRAIN_RECIPES[name]
    if data_dir is not None:  # a dataset of your own: the check's messages, before any file is written
        require_clean_layout(data_dir)
    seed_everything(config.seed)  # before building: the initial weights follow the recipe's seed
    splits = load_splits(data_dir)
    if min_steps is not None:
        chosen = schedule_for(config, len(splits.train), min_steps, max_iters_per_epoch)
        if chosen.epochs != config.epochs:
            log(f"{len(splits.train)} train images at batch {config.batch_size}: the recipe's {config.epochs} epochs "
                f"would be too few steps; training {chosen.epochs} epochs for at least {min_steps} steps "
                "(--epochs sets them yourself)")
        config = chosen
    if init == "shipped" and data_dir is not None:
        log("note: the shipped detectors learned the embedded dataset's synthetic shapes. On photographs they "
            "overfit early (training loss keeps falling while val mAP stalls); for real photos, fine-tune from "
            "--init coco-pretrained (torchvision's COCO weights, one download)")
    model, design, init_meta = initial_detector(name, init, splits.label_map)
    return train_and_ship(model, design, splits, config, Path(out_dir) / f"{name}.pt",
                          meta={"preset": name, **init_meta}, max_iters_per_epoch=max_iters_per_epoch,
                          progress=progress)


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
    model, label_map, _ = load_preset(name, checkpoint)
    val_set = load_split("val", data_dir, label_map=label_map)
    metrics = evaluate(model, make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False), label_map,
                       progress=progress)
    core_size = core_input_size(model, val_set[0][0])  # what the core sees of a val image, as in a study
    return {"preset": name, **metrics, "params": count_params(model),
            "macs": count_macs(ExportableCore(model), example_batch(core_size)), "macs_input": list(core_size),
            "images": len(val_set)}
