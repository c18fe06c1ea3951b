"""Train a detector and ship it: the one routine behind every recipe that writes a trained checkpoint.

A recipe (a preset, a backbone, a distilled student, a pruned or converted teacher) says only what is its own: the
detector and its design, the splits, its metadata, and what its technique adds to the run (an
:class:`ExtraTraining`, e.g. a distiller). :func:`train_and_ship` does the rest in one order for all of them: the
loaders, ``fit`` in a resumable run folder, the training record, and :func:`ship_checkpoint`, which saves, reloads
and evaluates the checkpoint so that its recorded mAPs are those of the weights as shipped.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from compresskit.data import load_split
from compresskit.data.dataset import LabelMap
from compresskit.data.files import atomic_write_json
from compresskit.engine.evaluation import VAL_SUBSET_IMAGES, evaluate, val_subset
from compresskit.engine.loop import ExtraLoss, ExtraTargets, TrainConfig, fit, is_main_process, make_loader
from compresskit.engine.norms import deployed_head_statistics
from compresskit.measure import environment_stamp
from compresskit.models import DetectorSpec, load_checkpoint, save_checkpoint, save_torchvision_checkpoint

EVAL_BATCH_SIZE = 8  # images per batch whenever a recipe evaluates (batching does not change the mAP)


@dataclass(frozen=True)
class Splits:
    """What a run trains on (``train``, with its augmentation) and is evaluated on (``val``; None: not evaluated)."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None = None

    @property
    def label_map(self) -> LabelMap:
        return self.train.label_map


def load_splits(data_dir: Path | str | None = None, label_map: LabelMap | None = None) -> Splits:
    """The train and val splits of a kit-layout dataset (default: the embedded one), labelled by ``label_map``
    (default: the dataset's own categories; give a detector's to train it on the labels it already predicts)."""
    return Splits(load_split("train", data_dir, label_map=label_map), load_split("val", data_dir, label_map=label_map))


@dataclass
class ExtraTraining:
    """What a technique adds to a run of the engine's loop, beside the detector's own losses.

    Attributes:
        loss: ``fit``'s ``extra_loss``, ``(model, images, targets) -> {name: loss}`` (None: nothing is added).
        modules: ``fit``'s ``extra_modules``: trainable modules outside the detector that ``loss`` uses.
        attach: ``attach(detector)`` opens what ``loss`` needs around the run (e.g. forward hooks that keep the
            detector's outputs); a context manager.
        record: metadata recorded once the run is over (e.g. the technique's config and a per-step log).
        targets: ``fit``'s ``extra_targets``, ``(images, targets) -> targets``: what each step trains on.
    """

    loss: ExtraLoss | None = None
    modules: nn.Module | None = None
    attach: Callable[[nn.Module], ContextManager] | None = None
    record: Callable[[], dict] | None = None
    targets: ExtraTargets | None = None


# Called with the detector about to train (after any pruning or conversion), so what it builds fits that detector.
ExtraTrainingFactory = Callable[[nn.Module], ExtraTraining]


def train_detector(detector: nn.Module, data: Splits, config: TrainConfig, run_dir: Path | str, *,
                   extra_training: ExtraTrainingFactory | None = None, deployed_head: bool = False,
                   max_iters_per_epoch: int | None = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Train ``detector`` in place on ``data.train`` with ``fit`` (resumable from ``run_dir``); nothing is shipped.

    Args:
        detector: a torchvision-style detector; trained in place and left on the training device.
        data: the splits; ``data.val`` is evaluated every ``config.eval_every`` epochs and after the last one.
        config: the optimisation recipe.
        run_dir: ``fit``'s folder (``last.pt`` after every epoch; a rerun resumes from it).
        extra_training: a factory of what a technique adds (see :class:`ExtraTraining`), called with
            ``detector`` just before it trains.
        deployed_head: a BatchNorm head normalises as it is deployed while the rest trains
            (:func:`~compresskit.engine.deployed_head_statistics`): for a detector trained before (pruned,
            converted, distilled into); nothing changes for any other head.
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.
        log: receives ``fit``'s line per epoch.

    Returns:
        ``fit``'s result (``history``, ``train_seconds``, ``metrics``) and ``extra_meta``: what the extra
        training recorded (``{}`` without one).
    """
    # The factory draws its random numbers (e.g. adapter weights) here, after the caller built the detector:
    # the recipes' initial weights depend on that order.
    extra = extra_training(detector) if extra_training is not None else ExtraTraining()
    val_loader = make_loader(data.val, batch_size=EVAL_BATCH_SIZE, train=False) if data.val is not None else None
    hooks = extra.attach(detector) if extra.attach is not None else contextlib.nullcontext()
    head = deployed_head_statistics(detector) if deployed_head else contextlib.nullcontext()
    with hooks, head:
        result = fit(detector, data.train, val_loader, config, run_dir, extra_loss=extra.loss,
                     extra_modules=extra.modules, max_iters_per_epoch=max_iters_per_epoch, progress=progress,
                     log=log, extra_targets=extra.targets)
    return {**result, "extra_meta": extra.record() if extra.record is not None else {}}


def train_and_ship(detector: nn.Module, spec: DetectorSpec | str, data: Splits, config: TrainConfig,
                   out: Path | str, *, meta: dict, extra_training: ExtraTrainingFactory | None = None,
                   deployed_head: bool = False, measure_start: bool = False,
                   trained_meta: Callable[[nn.Module], dict] | None = None, run_dir: Path | str | None = None,
                   max_iters_per_epoch: int | None = None, progress: bool = True) -> Path:
    """Train ``detector`` in place (:func:`train_detector`), then ship it as checkpoint ``out`` (``.pt`` + ``.json``).

    ``fit`` seeds the run from ``config.seed``; a recipe that builds a fresh detector seeds before building it,
    so its initial weights follow the seed too. Under ``torchrun`` every rank trains and rank 0 alone evaluates
    and writes. Afterwards ``detector`` is on the CPU.

    Args:
        detector: the detector to train, built from ``spec`` (pruned, converted or not).
        spec: its design, as :func:`ship_checkpoint` takes it.
        data: the splits; ``data.val`` is evaluated during the run and on the shipped weights.
        config: the optimisation recipe (recorded as ``train_config``; ``seed`` is its seed).
        out: the ``.pt`` file to write.
        meta: the recipe's own metadata; the training record follows it: ``map_before_finetune`` (with
            ``measure_start``), ``train_config``, ``train_seconds``, ``wall_seconds_incl_eval`` (from the start of
            the run until shipping), ``history``, ``resumed_after_epochs`` (empty unless an interrupted run was
            resumed), ``seed``, then what the extra training and ``trained_meta``
            record; :func:`ship_checkpoint` adds the rest.
        extra_training: see :func:`train_detector`.
        deployed_head: see :func:`train_detector`.
        measure_start: evaluate ``detector`` on ``data.val`` before training (``map_before_finetune``): what a
            fine-tune starts from.
        trained_meta: ``trained_meta(detector) -> dict``, metadata measured on the trained detector (on the
            CPU), e.g. its MACs.
        run_dir: the resumable run (default: ``NAME-run`` beside ``out``): ``last.pt`` after every epoch, removed
            once the checkpoint is shipped.
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.

    Returns:
        ``out``.
    """
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out.with_name(f"{out.stem}-run")
    before = {}
    if measure_start:
        val_loader = make_loader(data.val, batch_size=EVAL_BATCH_SIZE, train=False)
        before = {"map_before_finetune": evaluate(detector, val_loader, data.label_map, progress=progress)}
    started = time.perf_counter()
    result = train_detector(detector, data, config, run_dir, extra_training=extra_training,
                            deployed_head=deployed_head, max_iters_per_epoch=max_iters_per_epoch, progress=progress)
    detector.cpu()  # fit leaves it on the training device; shipping and measuring happen on the CPU
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return out
    meta = {**meta, **before, "train_config": asdict(config), "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(time.perf_counter() - started, 1), "history": result["history"],
            "resumed_after_epochs": result.get("resumed_after", []), "seed": config.seed, **result["extra_meta"],
            **(trained_meta(detector) if trained_meta else {})}
    shipped = ship_checkpoint(out, detector, spec, data.label_map, meta, data.val, progress=progress)
    # The run is finished and shipped: its resume checkpoint (weights and optimiser state, several times the
    # shipped file) has nothing left to resume. A rerun of the recipe trains again.
    (run_dir / "last.pt").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when nothing else was put there
    return shipped


def console_command() -> str | None:
    """The ``compresskit ...`` command line of this process when it runs the console script, else None."""
    program = Path(sys.argv[0])
    run_as_module = program.name == "__main__.py" and program.parent.name in ("compresskit", "cli")
    if program.stem != "compresskit" and not run_as_module:  # `python -m compresskit` runs the same command
        return None
    return " ".join(["compresskit", *(shlex.quote(argument) for argument in sys.argv[1:])])


def training_device_name() -> str:
    """What a run trains on: the CUDA device's name, else the CPU model (``fit`` picks the GPU when there is one)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return str(environment_stamp()["cpu"])


def input_size_of(model: nn.Module) -> dict | None:
    """The size the detector's own transform resizes images to before its network (``min_size``: the shorter
    side, ``max_size``: the cap on the longer, ``fixed_size``: SSD's fixed input), as a checkpoint records it (a
    coco-profile detector's follows ``COMPRESSKIT_COCO_IMAGE_SIZE``); None for a model without one."""
    transform = getattr(model, "transform", None)
    if transform is None or not hasattr(transform, "min_size"):
        return None
    fixed = getattr(transform, "fixed_size", None)
    return {"min_size": [int(size) for size in transform.min_size], "max_size": int(transform.max_size),
            "fixed_size": None if fixed is None else [int(side) for side in fixed]}


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
        meta: JSON-able training metadata; copied, then ``trained_on`` (unless given: the GPU's or CPU's name),
            ``command``, ``environment``, ``input_size`` (:func:`input_size_of`), ``val_metrics`` and
            ``val_subset`` are added.
        val_set: the validation dataset.
        half: store fp16 weights (half the file; measured mAP moves by well under 0.001).
        progress: show progress bars.

    Returns:
        ``path``.
    """
    path = Path(path)
    meta = {"trained_on": training_device_name(), **meta, "command": console_command(),
            "environment": environment_stamp(), "input_size": input_size_of(model)}
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
