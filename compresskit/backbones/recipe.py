"""The training run behind each backbone checkpoint: the student's budget, from scratch, through the engine's one
train-and-ship routine. ``compresskit train --backbone NAME`` runs it. Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

from pathlib import Path

from compresskit.backbones.designs import backbone_spec
from compresskit.engine import TrainConfig, load_splits, train_and_ship
from compresskit.models import build_detector
from compresskit.settings import seed_everything

TRAIN_RECIPE_BACKBONE = TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2)  # the student's budget


def train_backbone(name: str, out_dir: Path | str, config: TrainConfig | None = None,
                   data_dir: Path | str | None = None, max_iters_per_epoch: int | None = None,
                   progress: bool = True, width_mult: float | None = None) -> Path:
    """Train the detector on trunk ``name`` (see :func:`backbone_spec`) from scratch and ship it.

    Like ``compresskit.engine.train_preset`` (same arguments; ``config`` defaults to :data:`TRAIN_RECIPE_BACKBONE`,
    the student's budget): writes ``out_dir/backbone_NAME.pt`` and its ``.json`` through
    ``compresskit.engine.train_and_ship`` (``meta["width_mult"]`` tells the width), the resumable run beside them
    in ``backbone_NAME[_wMULT]-run``. Trains on the GPU when there is one (``fit`` picks the device);
    ``ship_checkpoint`` records which in ``meta["trained_on"]``.

    Returns:
        Path of the checkpoint.
    """
    config = config or TRAIN_RECIPE_BACKBONE
    # One run folder per width: resuming a run of another width would load tensors of the wrong shapes.
    width = "" if width_mult is None else f"_w{width_mult:g}"
    seed_everything(config.seed)  # before building: the initial weights follow the recipe's seed
    splits = load_splits(data_dir)
    spec = backbone_spec(name, num_classes=splits.label_map.num_classes, width_mult=width_mult)
    return train_and_ship(build_detector(spec), spec, splits, config, Path(out_dir) / f"backbone_{name}.pt",
                          meta={"backbone": name, "width_mult": width_mult},
                          run_dir=Path(out_dir) / f"backbone_{name}{width}-run",
                          max_iters_per_epoch=max_iters_per_epoch, progress=progress)
