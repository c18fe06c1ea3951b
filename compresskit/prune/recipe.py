"""The long recovery fine-tune behind the shipped pruned teacher: prune the shipped teacher, fine-tune it, and ship
it like any trained detector (``compresskit.engine.train_and_ship``). ``compresskit prune`` runs it, and
``compresskit prune --kd`` runs it with distillation from the unpruned teacher, which the caller passes in as the
run's extra training (pruning itself knows no distillation). The lesson keeps a short live fine-tune and loads the
result of this one. Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch import nn

from compresskit.data.dataset import LabelMap
from compresskit.engine import ExtraTrainingFactory, TrainConfig, load_splits, train_and_ship
from compresskit.models import checkpoint_design, load_checkpoint, load_preset, shipped_checkpoint
from compresskit.prune.structured import StructuredConfig, core_macs, prune_structured_

SHIPPED_PRUNED = "teacher_pruned"
# Recipe of the shipped pruned teacher; rerun with `compresskit prune --preset teacher`.
PRUNE_RECIPE = StructuredConfig(ratio=0.5)
FINETUNE_RECIPE = TrainConfig(epochs=8, batch_size=16, lr=1e-3, warmup_iters=50, eval_every=2)


def prune_and_finetune(out_dir: Path | str, preset: str = "teacher", prune_config: StructuredConfig | None = None,
                       train_config: TrainConfig | None = None, data_dir: Path | str | None = None,
                       name: str = SHIPPED_PRUNED, max_iters_per_epoch: int | None = None,
                       progress: bool = True, checkpoint: Path | str | None = None,
                       extra_training: ExtraTrainingFactory | None = None) -> Path:
    """Prune a preset structurally, fine-tune it, and write ``out_dir/NAME.pt`` (+ ``.json``).

    The recorded mAPs are measured after reloading the fp16 file, i.e. on the weights as shipped. A BatchNorm
    head keeps normalising as it is deployed during the fine-tune (``compresskit.engine.deployed_head_statistics``).

    Args:
        out_dir: where the checkpoint (and the resumable run, ``NAME-run``) are written.
        preset: the embedded preset to prune.
        prune_config: how to prune (default: :data:`PRUNE_RECIPE`).
        train_config: the fine-tune (default: :data:`FINETUNE_RECIPE`).
        data_dir: a COCO-format dataset with train and val splits (default: the embedded dataset).
        name: file name of the result.
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.
        checkpoint: start from this checkpoint instead of the shipped ``preset``.
        extra_training: what the fine-tune adds to the detector's own losses, built for the pruned detector
            (see ``compresskit.engine.ExtraTraining``): e.g. ``compresskit.distill.distillation(teacher)``,
            distillation from the unpruned detector, whose record (``method``, ``kd_config``, ``kd_steps``) joins
            the metadata. Same pruning and budget with or without it, so the results compare at equal cost.

    Returns:
        Path of the pruned checkpoint (load it with :func:`compresskit.models.load_checkpoint`); its metadata holds
        ``prune_config``, ``macs_before``, ``macs_after`` and ``map_before_finetune`` beside the training record.
    """
    prune_config = prune_config or PRUNE_RECIPE
    train_config = train_config or FINETUNE_RECIPE
    source = Path(checkpoint) if checkpoint is not None else shipped_checkpoint(preset)
    model, label_map, source_meta = load_preset(preset, checkpoint=source)
    meta = {"preset": preset, "prune_config": asdict(prune_config),
            "macs_before": core_macs(model, prune_config.image_size),
            "teacher_val_metrics": source_meta.get("val_metrics")}
    prune_structured_(model, prune_config)
    return train_and_ship(model, checkpoint_design(source), load_splits(data_dir, label_map=label_map), train_config,
                          Path(out_dir) / f"{name}.pt", meta=meta, extra_training=extra_training,
                          deployed_head=True, measure_start=True,
                          trained_meta=lambda pruned: {"macs_after": core_macs(pruned, prune_config.image_size)},
                          max_iters_per_epoch=max_iters_per_epoch, progress=progress)


def load_shipped_pruned(name: str = SHIPPED_PRUNED) -> tuple[nn.Module, LabelMap, dict]:
    """The pruned, fine-tuned teacher shipped in the package: ``(detector, label map, meta)``."""
    return load_checkpoint(shipped_checkpoint(name))
