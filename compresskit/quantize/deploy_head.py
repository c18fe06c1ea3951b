"""A deployment-friendly FCOS head for int8: BatchNorm instead of GroupNorm, and the fine-tune that recovers it.

In ONNX Runtime int8 the FCOS head's GroupNorm exports as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add
and stays a float island between the quantized convs (with NHWC<->NCHW Transposes around it). A BatchNorm2d head
exports, in eval mode, folded into the preceding Conv: the whole head quantizes. :func:`batchnorm_head` converts a
GroupNorm detector (weights kept, BatchNorm statistics measured on train images); :func:`finetune_deploy_head`
fine-tunes the converted teacher with those statistics frozen (``compresskit.engine.frozen_head_statistics``) and
ships it, through the engine's one train-and-ship routine::

    python -m compresskit.quantize.deploy_head --preset teacher --out runs/deploy_head

Introduced in ``03_quantization.ipynb``.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from compresskit.data import load_split
from compresskit.engine import TrainConfig, load_splits, train_and_ship
from compresskit.errors import CompressKitError, ConfigError
from compresskit.models import EMBEDDED_PRESETS, DetectorSpec, checkpoint_spec, load_preset, shipped_checkpoint
from compresskit.models.core import ExportableCore
from compresskit.quantize.calibration import calibration_batches

CALIBRATION_IMAGES = 64  # train images whose head activations set the BatchNorm statistics
STATISTICS_BATCH = 16  # images per forward while measuring: BatchNorm's variance is per batch, so not 1
# The fine-tune behind `python -m compresskit.quantize.deploy_head`: short, from the converted shipped teacher.
DEPLOY_HEAD_RECIPE = TrainConfig(epochs=4, batch_size=16, lr=1e-3, warmup_iters=50, eval_every=1)


def _head_group_norms(detector: nn.Module) -> dict[str, nn.GroupNorm]:
    return {name: module for name, module in detector.head.named_modules() if isinstance(module, nn.GroupNorm)}


def _stacked(batches: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Concatenate same-shaped ``(1, 3, H, W)`` inputs into batches of at most ``size`` images."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for batch in batches:
        by_shape.setdefault(tuple(batch.shape[1:]), []).append(batch)
    return [torch.cat(group[start:start + size]) for group in by_shape.values()
            for start in range(0, len(group), size)]


@torch.no_grad()
def measure_head_statistics_(detector: nn.Module, calibration_dataset, images: int = CALIBRATION_IMAGES,
                             seed: int = 0) -> None:
    """Set the running statistics of the head's BatchNorm2d layers from ``images`` train images, in place.

    Only the head's BatchNorms are switched to train mode (the trunk's own BatchNorms keep their statistics);
    ``momentum=None`` makes each running statistic the plain average over every forward, i.e. over all images and
    all five FPN levels alike. Afterwards the detector is in eval mode and each momentum as it was.

    Args:
        detector: an FCOS detector whose head holds BatchNorm2d layers.
        calibration_dataset: the train split without augmentation (``load_split("train", train_transforms=False)``).
        images: how many train images (see :func:`compresskit.quantize.calibration.calibration_batches`).
        seed: which images.
    """
    norms = [module for module in detector.head.modules() if isinstance(module, nn.BatchNorm2d)]
    if not norms:
        raise ConfigError("the detector's head has no BatchNorm2d layers; convert it with batchnorm_head first")
    inputs = calibration_batches(detector, calibration_dataset, images=images, seed=seed)  # sets eval mode
    device = next(detector.parameters()).device
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    core = ExportableCore(detector)
    try:
        for batch in _stacked(inputs, STATISTICS_BATCH):
            core(batch.to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum  # a later train-mode run updates them as an ordinary BatchNorm would
        detector.eval()


def batchnorm_head(detector: nn.Module, spec: DetectorSpec, calibration_dataset,
                   images: int = CALIBRATION_IMAGES) -> tuple[nn.Module, DetectorSpec]:
    """A copy of a GroupNorm-head FCOS detector whose head normalises with BatchNorm2d (the input is untouched).

    Every weight is kept (a deep copy); each head GroupNorm becomes a BatchNorm2d of the same width whose affine
    weight and bias are the GroupNorm's, and whose running statistics are measured on ``images`` train images
    (:func:`measure_head_statistics_`). In eval mode the BatchNorm is a per-channel affine that ONNX export folds
    into the preceding conv, so the int8 head has no float island left.

    mAP still drops after the conversion (the shipped teacher: 0.84 -> 0.06 on the first 100 val images), so the
    copy needs a fine-tune (:func:`finetune_deploy_head`): GroupNorm normalises each image and each FPN level with
    its own statistics, while the BatchNorm is shared by the five FPN levels (the head runs once per level) and
    normalises every image and level with the same dataset-wide averages.

    Args:
        detector: an embedded FCOS detector with the GroupNorm head (pruned or not).
        spec: its design (``head_norm == "group"``).
        calibration_dataset: the train split without augmentation.
        images: train images for the BatchNorm statistics.

    Returns:
        ``(converted copy in eval mode, spec with head_norm="batch")``. Save it with
        :func:`compresskit.models.save_checkpoint` and that spec; it reloads as the same architecture.
    """
    if spec.head_norm != "group":
        raise ConfigError(f"batchnorm_head converts a GroupNorm head, but the spec says head_norm="
                          f"{spec.head_norm!r}; pass the spec of a head_norm='group' detector")
    if not _head_group_norms(detector):
        raise ConfigError("the detector's head has no GroupNorm layers to convert; pass an embedded FCOS detector "
                          "with torchvision's GroupNorm head")
    converted = copy.deepcopy(detector).eval()
    for name, group_norm in _head_group_norms(converted).items():
        parent_name, _, child = name.rpartition(".")
        batch_norm = nn.BatchNorm2d(group_norm.num_channels, eps=group_norm.eps).to(group_norm.weight.device)
        with torch.no_grad():
            batch_norm.weight.copy_(group_norm.weight)
            batch_norm.bias.copy_(group_norm.bias)
        setattr(converted.head.get_submodule(parent_name), child, batch_norm)
    measure_head_statistics_(converted, calibration_dataset, images=images)
    return converted, replace(spec, head_norm="batch")


def finetune_deploy_head(out_dir: Path | str, preset: str = "teacher", train_config: TrainConfig | None = None,
                         data_dir: Path | str | None = None, name: str | None = None,
                         max_iters_per_epoch: int | None = None, progress: bool = True) -> Path:
    """Convert a shipped preset to a BatchNorm head, fine-tune it, and write ``out_dir/NAME.pt`` (+ ``.json``).

    The head's BatchNorm statistics stay as measured on the train images while the rest trains (see
    :func:`~compresskit.engine.frozen_head_statistics` for why and what it changes). The run
    (``out_dir/NAME-run/last.pt``, one checkpoint per epoch) resumes when started again. The recorded mAPs after
    the fine-tune are measured on the reloaded fp16 file (:func:`compresskit.engine.ship_checkpoint`). Runs
    unchanged on a GPU (the loop picks CUDA when there is one; 4 epochs took 70 s on an H100) and on CPU.

    Args:
        out_dir: where the checkpoint and the resumable run are written.
        preset: the shipped embedded preset to start from (``teacher``, ``student``).
        train_config: the fine-tune (default: :data:`DEPLOY_HEAD_RECIPE`).
        data_dir: a COCO-format dataset with train and val splits (default: the embedded dataset).
        name: file name of the result (default ``f"{preset}_bnhead"``).
        max_iters_per_epoch: cap on steps per epoch (quick checks only).
        progress: show progress bars.

    Returns:
        Path of the checkpoint (load it with :func:`compresskit.models.load_checkpoint`).
    """
    train_config = train_config or DEPLOY_HEAD_RECIPE
    name = name or f"{preset}_bnhead"
    model, label_map, source_meta = load_preset(preset)
    spec = checkpoint_spec(shipped_checkpoint(preset))
    calibration_set = load_split("train", data_dir, train_transforms=False, label_map=label_map)
    calibration_images = min(CALIBRATION_IMAGES, len(calibration_set))  # a small user dataset uses all it has
    model, spec = batchnorm_head(model, spec, calibration_set, images=calibration_images)
    meta = {"preset": preset, "head_norm": spec.head_norm, "head_statistics": "frozen during the fine-tune",
            "calibration_images": calibration_images, "source_val_metrics": source_meta.get("val_metrics")}
    # deployed_head: the converted head is BatchNorm, so its statistics stay frozen while the rest trains.
    return train_and_ship(model, spec, load_splits(data_dir, label_map=label_map), train_config,
                          Path(out_dir) / f"{name}.pt", meta=meta, deployed_head=True, measure_start=True,
                          max_iters_per_epoch=max_iters_per_epoch, progress=progress)


def _positive(text: str) -> int:
    value = int(text) if text.strip().lstrip("+").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> Path:
    """``python -m compresskit.quantize.deploy_head``: the fine-tune as a job (see :func:`finetune_deploy_head`)."""
    parser = argparse.ArgumentParser(description="Fine-tune a shipped preset with a BatchNorm FCOS head for int8.")
    parser.add_argument("--preset", default="teacher", choices=sorted(EMBEDDED_PRESETS),
                        help="shipped embedded preset to start from")
    parser.add_argument("--out", required=True, type=Path, help="folder for the checkpoint and the resumable run")
    parser.add_argument("--epochs", type=_positive, help=f"epochs (default {DEPLOY_HEAD_RECIPE.epochs})")
    parser.add_argument("--max-iters", type=_positive, help="cap on steps per epoch (quick checks only)")
    parser.add_argument("--data", type=Path, help="COCO-format dataset with train and val splits")
    args = parser.parse_args(argv)
    config = DEPLOY_HEAD_RECIPE if args.epochs is None else replace(DEPLOY_HEAD_RECIPE, epochs=args.epochs)
    try:
        path = finetune_deploy_head(args.out, preset=args.preset, train_config=config, data_dir=args.data,
                                    max_iters_per_epoch=args.max_iters)
    except CompressKitError as exc:  # a user error: its message says what to fix, a traceback would not
        parser.exit(2, f"error: {exc}\n")
    print(path)
    return path


if __name__ == "__main__":
    main()
