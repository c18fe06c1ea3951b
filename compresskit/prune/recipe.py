"""The long recovery fine-tune behind the shipped pruned teacher: prune the shipped teacher, fine-tune it through
the engine, and ship it like any trained detector (``compresskit.engine.ship_checkpoint``). ``compresskit prune``
runs it; the lesson keeps a short live fine-tune and loads the result of this one.
Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from torch import nn

from compresskit.data import load_split
from compresskit.data.dataset import LabelMap
from compresskit.engine import (TrainConfig, deployed_head_statistics, evaluate, fit, is_main_process, make_loader,
                                ship_checkpoint)
from compresskit.models import checkpoint_spec, load_checkpoint, load_preset, shipped_checkpoint
from compresskit.prune.structured import StructuredConfig, core_macs, prune_structured_

SHIPPED_PRUNED = "teacher_pruned"
# Recipe of the shipped pruned teacher; rerun with `compresskit prune --preset teacher`.
PRUNE_RECIPE = StructuredConfig(ratio=0.5)
FINETUNE_RECIPE = TrainConfig(epochs=8, batch_size=16, lr=1e-3, warmup_iters=50, eval_every=2)


def prune_and_finetune(out_dir: Path | str, preset: str = "teacher", prune_config: StructuredConfig | None = None,
                       train_config: TrainConfig | None = None, data_dir: Path | str | None = None,
                       name: str = SHIPPED_PRUNED, max_iters_per_epoch: int | None = None,
                       progress: bool = True, checkpoint: Path | str | None = None) -> Path:
    """Prune a preset structurally, fine-tune it, and write ``out_dir/NAME.pt`` (+ ``.json``).

    The recorded mAPs are measured after reloading the fp16 file, i.e. on the weights as shipped.

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

    Returns:
        Path of the pruned checkpoint (load it with :func:`compresskit.models.load_checkpoint`).
    """
    prune_config = prune_config or PRUNE_RECIPE
    train_config = train_config or FINETUNE_RECIPE
    out_dir = Path(out_dir)
    source = Path(checkpoint) if checkpoint is not None else shipped_checkpoint(preset)
    model, label_map, source_meta = load_preset(preset, checkpoint=source)
    spec = checkpoint_spec(source)
    macs_before = core_macs(model, prune_config.image_size)
    prune_structured_(model, prune_config)
    train_set = load_split("train", data_dir, label_map=label_map)
    val_set = load_split("val", data_dir, label_map=label_map)
    val_loader = make_loader(val_set, batch_size=8, train=False)
    before = evaluate(model, val_loader, label_map, progress=progress)
    started = time.perf_counter()
    with deployed_head_statistics(model):  # a BatchNorm head trains as it is exported
        result = fit(model, train_set, val_loader, train_config, out_dir / f"{name}-run",
                     max_iters_per_epoch=max_iters_per_epoch, progress=progress)
    target = out_dir / f"{name}.pt"
    if not is_main_process():
        return target
    model.cpu()  # fit leaves it on the training device; MACs are counted on a CPU example batch
    meta = {"preset": preset, "prune_config": asdict(prune_config), "train_config": asdict(train_config),
            "macs_before": macs_before, "macs_after": core_macs(model, prune_config.image_size),
            "map_before_finetune": before, "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(time.perf_counter() - started, 1), "history": result["history"],
            "seed": train_config.seed, "teacher_val_metrics": source_meta.get("val_metrics")}
    return ship_checkpoint(target, model, spec, label_map, meta, val_set, progress=progress)


def load_shipped_pruned(name: str = SHIPPED_PRUNED) -> tuple[nn.Module, LabelMap, dict]:
    """The pruned, fine-tuned teacher shipped in the package: ``(detector, label map, meta)``."""
    return load_checkpoint(shipped_checkpoint(name))
