"""The distillation runs behind lesson 04: a student trained with KD from the shipped teacher on the student's own
budget (so KD and no KD compare at equal cost), and the pruned teacher's recovery fine-tune with KD from the
unpruned one. Both train through the engine's one loop and ship like any trained detector
(``compresskit.engine.ship_checkpoint``). Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from compresskit.data import load_split
from compresskit.distill.fcos import Distiller, KDConfig, check_label_maps
from compresskit.engine import (TrainConfig, deployed_head_statistics, evaluate, fit, is_main_process, make_loader,
                                ship_checkpoint)
from compresskit.engine.recipes import EVAL_BATCH_SIZE
from compresskit.errors import ConfigError
from compresskit.models import EMBEDDED_PRESETS, build_detector, checkpoint_spec, load_preset, shipped_checkpoint
from compresskit.settings import seed_everything

if TYPE_CHECKING:  # annotation only: importing prune at run time is deferred to distill_pruned
    from compresskit.prune import StructuredConfig

# The student's own shipped recipe (compresskit.engine.TRAIN_RECIPES["student"]): KD and no KD get one budget.
DISTILL_RECIPE = TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2)
KD_STEP_ROWS = 400  # per-step KD log kept in a checkpoint's metadata, evenly thinned to at most this many rows


def _fit_distilled(model: nn.Module, distiller: Distiller | None, train_set, val_loader, config: TrainConfig,
                   run_dir: Path, max_iters_per_epoch: int | None, progress: bool) -> dict:
    """``fit`` with the distiller as extra loss and its adapters as extra modules; plain ``fit`` without one."""
    if distiller is None:
        with deployed_head_statistics(model):
            return fit(model, train_set, val_loader, config, run_dir, max_iters_per_epoch=max_iters_per_epoch,
                       progress=progress)
    with distiller.attach(model), deployed_head_statistics(model):
        return fit(model, train_set, val_loader, config, run_dir, extra_loss=distiller,
                   extra_modules=distiller.adapters, max_iters_per_epoch=max_iters_per_epoch, progress=progress)


def kd_step_log(distiller: Distiller | None, limit: int = KD_STEP_ROWS) -> list[dict]:
    """The distiller's per-step terms as ``{"step", term: value}`` rows, evenly thinned to at most ``limit``."""
    if distiller is None:
        return []
    rows = [{"step": step, **terms} for step, terms in enumerate(distiller.history)]
    return rows[::math.ceil(len(rows) / limit)] if len(rows) > limit else rows


def distill_student(out_dir: Path | str, method: str = "both", student: str = "student", teacher: str = "teacher",
                    kd_config: KDConfig | None = None, train_config: TrainConfig | None = None,
                    data_dir: Path | str | None = None, max_iters_per_epoch: int | None = None,
                    progress: bool = True, name: str | None = None,
                    teacher_checkpoint: Path | str | None = None) -> Path:
    """Train a fresh student with knowledge distillation from a shipped teacher, and ship it.

    The student starts exactly as ``compresskit.engine.train_preset`` starts it (same seed, same initial weights,
    same data order), so every method, ``none`` included, differs only by its KD terms; ``none`` reproduces the
    plain training run.

    Args:
        out_dir: where ``NAME.pt`` (+ ``.json``) and the resumable run ``NAME-run`` are written.
        method: ``none``, ``logit``, ``feature`` or ``both``; overrides ``kd_config.method``.
        student: the embedded preset to train.
        teacher: the embedded preset to distil from.
        kd_config: weights, temperature, foreground weighting (default: :class:`KDConfig`).
        train_config: the recipe (default: :data:`DISTILL_RECIPE`, the student's own).
        data_dir: a COCO-format dataset with train and val splits (default: the embedded dataset).
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.
        name: file name of the result (default ``student_kd_METHOD``).
        teacher_checkpoint: distil from this checkpoint instead of the shipped ``teacher``.

    Returns:
        Path of the checkpoint; its metadata holds ``method``, ``kd_config``, ``train_config``, ``history``,
        ``kd_steps``, ``teacher`` and ``teacher_val_metrics``.
    """
    kd_config = replace(kd_config or KDConfig(), method=method)  # replace() re-validates the method
    train_config = train_config or DISTILL_RECIPE
    if student not in EMBEDDED_PRESETS:
        raise ConfigError(f"unknown student preset {student!r}; choose one of {sorted(EMBEDDED_PRESETS)}")
    out_dir, name = Path(out_dir), name or f"student_kd_{method}"
    seed_everything(train_config.seed)
    train_set, val_set = load_split("train", data_dir), load_split("val", data_dir)
    spec = replace(EMBEDDED_PRESETS[student], num_classes=train_set.label_map.num_classes)
    model = build_detector(spec)
    # Loaded after the student is built: building the teacher draws random numbers, which would change the
    # student's initial weights. (fit seeds again, so the data order does not depend on it either.)
    teacher_model, teacher_label_map, teacher_meta = load_preset(teacher, checkpoint=teacher_checkpoint)
    distiller = None
    if method != "none":
        check_label_maps(train_set.label_map, teacher_label_map)
        distiller = Distiller(model, teacher_model, kd_config)
    val_loader = make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False)
    started = time.perf_counter()
    result = _fit_distilled(model, distiller, train_set, val_loader, train_config, out_dir / f"{name}-run",
                            max_iters_per_epoch, progress)
    checkpoint = out_dir / f"{name}.pt"
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return checkpoint
    teacher_metrics = teacher_meta.get("val_metrics") or {}
    meta = {"preset": student, "method": method, "kd_config": asdict(kd_config),
            "train_config": asdict(train_config), "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(time.perf_counter() - started, 1), "history": result["history"],
            "kd_steps": kd_step_log(distiller), "teacher": teacher,
            "teacher_checkpoint": Path(teacher_checkpoint).name if teacher_checkpoint is not None else None,
            "teacher_map": teacher_metrics.get("map"), "teacher_val_metrics": teacher_metrics or None,
            "seed": train_config.seed}
    return ship_checkpoint(checkpoint, model, spec, train_set.label_map, meta, val_set, progress=progress)


def distill_pruned(out_dir: Path | str, teacher: str = "teacher", kd_config: KDConfig | None = None,
                   train_config: TrainConfig | None = None, prune_config: StructuredConfig | None = None,
                   data_dir: Path | str | None = None,
                   max_iters_per_epoch: int | None = None, progress: bool = True, name: str = "teacher_pruned_kd",
                   checkpoint: Path | str | None = None) -> Path:
    """Prune the teacher as the shipped pruned teacher was pruned, then recover it with KD from the unpruned one.

    Same pruning (``compresskit.prune.PRUNE_RECIPE``) and fine-tune budget (``compresskit.prune.FINETUNE_RECIPE``)
    as ``compresskit.prune.prune_and_finetune``, so the two results compare at equal cost.

    Args:
        out_dir: where ``NAME.pt`` (+ ``.json``) and the resumable run ``NAME-run`` are written.
        teacher: the embedded preset to prune and to distil from.
        kd_config: what to distil (default: :class:`KDConfig`, logits and features).
        train_config: the fine-tune (default: ``FINETUNE_RECIPE``).
        prune_config: a ``compresskit.prune.StructuredConfig`` (default: ``PRUNE_RECIPE``).
        data_dir: a COCO-format dataset with train and val splits (default: the embedded dataset).
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.
        name: file name of the result.
        checkpoint: start from (and distil from) this checkpoint instead of the shipped ``teacher``.

    Returns:
        Path of the pruned checkpoint; its metadata holds ``prune_config``, ``kd_config``, ``macs_before`` and
        ``macs_after``, ``map_before_finetune`` and ``kd_steps`` beside the training record.
    """
    # Recovering a pruned model is where this technique meets pruning; the pruning itself stays prune's.
    from compresskit.prune import FINETUNE_RECIPE, PRUNE_RECIPE, core_macs, prune_structured_

    kd_config = kd_config or KDConfig()
    train_config = train_config or FINETUNE_RECIPE
    prune_config = prune_config or PRUNE_RECIPE
    out_dir = Path(out_dir)
    source = Path(checkpoint) if checkpoint is not None else shipped_checkpoint(teacher)
    model, label_map, source_meta = load_preset(teacher, checkpoint=source)
    teacher_model, _, _ = load_preset(teacher, checkpoint=source)  # the unpruned copy that teaches
    spec = checkpoint_spec(source)
    macs_before = core_macs(model, prune_config.image_size)
    prune_structured_(model, prune_config)
    train_set = load_split("train", data_dir, label_map=label_map)
    val_set = load_split("val", data_dir, label_map=label_map)
    val_loader = make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False)
    before = evaluate(model, val_loader, label_map, progress=progress)
    distiller = Distiller(model, teacher_model, kd_config) if kd_config.method != "none" else None
    started = time.perf_counter()
    result = _fit_distilled(model, distiller, train_set, val_loader, train_config, out_dir / f"{name}-run",
                            max_iters_per_epoch, progress)
    target = out_dir / f"{name}.pt"
    if not is_main_process():
        return target
    model.cpu()  # fit leaves it on the training device; MACs are counted on a CPU example batch
    meta = {"preset": teacher, "prune_config": asdict(prune_config), "kd_config": asdict(kd_config),
            "method": kd_config.method, "train_config": asdict(train_config), "macs_before": macs_before,
            "macs_after": core_macs(model, prune_config.image_size), "map_before_finetune": before,
            "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(time.perf_counter() - started, 1), "history": result["history"],
            "kd_steps": kd_step_log(distiller), "seed": train_config.seed,
            "teacher_val_metrics": source_meta.get("val_metrics")}
    return ship_checkpoint(target, model, spec, label_map, meta, val_set, progress=progress)
