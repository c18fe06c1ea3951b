"""The distillation runs behind lesson 04: the distillation a recipe adds to the engine's loop
(:func:`distillation`), and a student trained with KD from the shipped teacher on the student's own budget (so KD
and no KD compare at equal cost). The pruned teacher's recovery with KD from the unpruned one is pruning's
``prune_and_finetune`` given :func:`distillation`: the caller that combines the two techniques passes it.
Everything trains and ships through ``compresskit.engine.train_and_ship``. Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from torch import nn

from compresskit.distill.boxes import BoxDistiller
from compresskit.distill.fcos import LOCATION_METHODS, Distiller, KDConfig, check_label_maps, distillable
from compresskit.engine import ExtraTraining, ExtraTrainingFactory, TrainConfig, load_splits, train_and_ship
from compresskit.errors import ConfigError
from compresskit.engine.recipes import INITS, initial_detector
from compresskit.models import EMBEDDED_PRESETS, load_preset
from compresskit.settings import seed_everything

# The student's own shipped recipe (compresskit.engine.TRAIN_RECIPES["student"]): KD and no KD get one budget.
DISTILL_RECIPE = TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2)
KD_STEP_ROWS = 400  # per-step KD log kept in a checkpoint's metadata, evenly thinned to at most this many rows


def kd_step_log(distiller: Distiller | BoxDistiller | None, limit: int = KD_STEP_ROWS) -> list[dict]:
    """The distiller's per-step terms as ``{"step", term: value}`` rows, evenly thinned to at most ``limit``."""
    if distiller is None:
        return []
    rows = [{"step": step, **terms} for step, terms in enumerate(distiller.history)]
    return rows[::math.ceil(len(rows) / limit)] if len(rows) > limit else rows


def default_method(teacher: nn.Module) -> str:
    """The distillation the kit applies when none is named: ``both`` (logits and features, location by location)
    from an FCOS teacher, ``boxes`` from any other detector, whose head no student's lines up with."""
    return "both" if distillable(teacher) else "boxes"


def distillation(teacher: nn.Module, config: KDConfig | None = None) -> ExtraTrainingFactory:
    """Knowledge distillation from ``teacher`` as what a run of ``compresskit.engine.train_and_ship`` adds.

    Give the result as ``extra_training``: called with the student just before it trains (after any pruning, so
    the feature adapters fit the student's widths as they are), it builds a :class:`Distiller` whose KD terms are
    the extra loss, whose adapters train as extra modules, and whose hooks are attached for the run. Method
    ``boxes`` builds a :class:`~compresskit.distill.boxes.BoxDistiller` instead, whose teacher detections join
    each step's targets (any two detectors with the same label map). Method ``none`` adds nothing to the run.
    Either way the run records ``method``, ``kd_config`` and ``kd_steps`` (the per-step KD terms, see
    :func:`kd_step_log`).

    Args:
        teacher: a trained detector with the student's classes (for the FCOS methods also its input size and
            strides); frozen (in place) once the distiller is built.
        config: what to distil (default: :class:`KDConfig`, logits and features).

    Returns:
        ``factory(student) -> ExtraTraining``.

    Raises:
        ConfigError: ``teacher`` is not a detector the distiller reads (see :func:`distillable`), before any
            training starts.
    """
    config = config or KDConfig()
    if config.method in LOCATION_METHODS and not distillable(teacher):
        raise ConfigError(f"distillation of {config.method} pairs FCOS heads location by location, and the teacher "
                          f"is a {type(teacher).__name__}; distil with method 'boxes' instead (`--kd boxes`, "
                          "`distill --method boxes`: any two detectors with the same categories), or fine-tune "
                          "without distillation")

    def extra(student: nn.Module) -> ExtraTraining:
        def record() -> dict:
            return {"method": config.method, "kd_config": asdict(config), "kd_steps": kd_step_log(distiller)}

        if config.method == "none":
            distiller = None
            return ExtraTraining(record=record)
        if config.method == "boxes":
            distiller = BoxDistiller(teacher, score=config.box_score, overlap=config.box_overlap)
            return ExtraTraining(targets=distiller, record=record)
        distiller = Distiller(student, teacher, config)
        return ExtraTraining(loss=distiller, modules=distiller.adapters, attach=distiller.attach, record=record)

    return extra


def distill_student(out_dir: Path | str, method: str = "both", student: str = "student", teacher: str = "teacher",
                    kd_config: KDConfig | None = None, train_config: TrainConfig | None = None,
                    data_dir: Path | str | None = None, max_iters_per_epoch: int | None = None,
                    progress: bool = True, name: str | None = None,
                    teacher_checkpoint: Path | str | None = None, init: str = "scratch") -> Path:
    """Train a student with knowledge distillation from a shipped teacher, and ship it.

    The student starts exactly as ``compresskit.engine.train_preset`` starts it with ``init`` (same seed, same
    initial weights, same data order), so every method, ``none`` included, differs only by its KD terms; ``none``
    reproduces the plain training run.

    Args:
        out_dir: where ``NAME.pt`` (+ ``.json``) and the resumable run ``NAME-run`` are written.
        method: ``none``, ``logit``, ``feature``, ``both`` (FCOS pairs) or ``boxes`` (any pair); overrides
            ``kd_config.method``.
        student: the embedded preset to train.
        teacher: the embedded preset to distil from.
        kd_config: weights, temperature, foreground weighting (default: :class:`KDConfig`).
        train_config: the recipe (default: :data:`DISTILL_RECIPE`, the student's own).
        data_dir: a COCO-format dataset with train and val splits (default: the embedded dataset).
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.
        name: file name of the result (default ``student_kd_METHOD``).
        teacher_checkpoint: distil from this checkpoint instead of the shipped ``teacher``.
        init: where the student starts (``compresskit.engine.recipes.INITS``): ``scratch``, ``shipped`` or
            ``coco-pretrained`` (the coco profile's torchvision student fine-tuned on ``data_dir``, e.g. taught by
            a fine-tuned RetinaNet with method ``boxes``).

    Returns:
        Path of the checkpoint; its metadata holds ``method``, ``kd_config``, ``train_config``, ``history``,
        ``kd_steps``, ``teacher`` and ``teacher_val_metrics``.
    """
    kd_config = replace(kd_config or KDConfig(), method=method)  # replace() re-validates the method
    train_config = train_config or DISTILL_RECIPE
    if student not in EMBEDDED_PRESETS:
        raise ConfigError(f"unknown student preset {student!r}; choose one of {sorted(EMBEDDED_PRESETS)}")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of {INITS}")
    if init == "coco-pretrained" and data_dir is None:
        raise ConfigError("--init coco-pretrained fine-tunes the COCO-pretrained student on a dataset of your own: "
                          "give --data DIR")
    name = name or f"student_kd_{method}"
    seed_everything(train_config.seed)  # before building: the student starts as train_preset starts it
    splits = load_splits(data_dir)
    model, spec, init_meta = initial_detector(student, init, splits.label_map)
    # Loaded after the student is built: building the teacher draws random numbers, which would change the
    # student's initial weights. (fit seeds again, so the data order does not depend on it either.)
    teacher_model, teacher_label_map, teacher_meta = load_preset(teacher, checkpoint=teacher_checkpoint)
    if method != "none":
        try:
            check_label_maps(splits.label_map, teacher_label_map)
        except ConfigError as error:
            if teacher_checkpoint is None:  # the shipped teachers know the embedded dataset's categories only
                raise ConfigError(f"the shipped {teacher} was trained on other categories than {data_dir}'s: pass "
                                  f"--teacher-checkpoint, a {teacher} fine-tuned on that data (`compresskit train "
                                  f"--preset {teacher} --init coco-pretrained --data {data_dir}` writes one)"
                                  ) from error
            raise
    teacher_metrics = teacher_meta.get("val_metrics") or {}
    meta = {"preset": student, **init_meta, "teacher": teacher,
            "teacher_checkpoint": Path(teacher_checkpoint).name if teacher_checkpoint is not None else None,
            "teacher_map": teacher_metrics.get("map"), "teacher_val_metrics": teacher_metrics or None}
    return train_and_ship(model, spec, splits, train_config, Path(out_dir) / f"{name}.pt", meta=meta,
                          extra_training=distillation(teacher_model, kd_config), deployed_head=True,
                          max_iters_per_epoch=max_iters_per_epoch, progress=progress)
