"""Calibration inputs for static quantization: exactly N images from the *train* split, as core inputs.

The val split is never used (it would leak the evaluation data into the quantization ranges), and the count is
never capped silently: asking for more images than the split has is an error. Introduced in
``03_quantization.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn

from compresskit.errors import ConfigError


def calibration_indices(dataset_size: int, images: int, seed: int = 0) -> list[int]:
    """``images`` distinct indices of a dataset of ``dataset_size`` items, drawn by a seeded permutation.

    Raises:
        ConfigError: ``images`` is below 1 or above ``dataset_size``.
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"calibration images must be a positive integer, got {images!r}")
    if images > dataset_size:
        raise ConfigError(f"{images} calibration images asked for, but the train split has only {dataset_size}; "
                          f"use at most {dataset_size}")
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:images].tolist())


@torch.no_grad()  # not inference_mode: its tensors cannot enter torch.export (PT2E takes these batches)
def calibration_batches(detector: nn.Module, dataset, images: int, seed: int = 0) -> list[torch.Tensor]:
    """Core inputs for calibration: ``images`` train images, each through the detector's own transform (resize,
    normalise, pad), as ``(1, 3, H, W)`` tensors.

    Args:
        detector: the float torchvision detector whose core is quantized (its ``transform`` is used).
        dataset: the **train** split (a kit ``CocoDetection``); items are ``(image, target)``.
        images: exactly this many images are used (see :func:`calibration_indices`).
        seed: picks which images.
    Returns:
        A list of ``images`` tensors.
    """
    detector.eval()
    batches = []
    for index in calibration_indices(len(dataset), images, seed):
        image, _ = dataset[index]
        batches.append(detector.transform([image])[0].tensors)
    return batches


def check_calibration_settings(config) -> None:
    """The settings every static-int8 config shares, checked in place: ``calibration_images`` (an integer >= 1),
    ``seed`` (an integer) and ``exclude`` (a tuple of non-empty names; a list read back from JSON becomes one).

    Raises:
        ConfigError: naming the setting and the value.
    """
    for name, lowest in (("calibration_images", 1), ("seed", None)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or (lowest is not None and value < lowest):
            raise ConfigError(f"{name} must be an integer{f' >= {lowest}' if lowest else ''}, got {value!r}")
    if isinstance(config.exclude, str):  # a lone string would be split into characters
        raise ConfigError(f"exclude must be a tuple of names, e.g. ({config.exclude!r},), not a string")
    config.exclude = tuple(config.exclude)
    if not all(isinstance(item, str) and item for item in config.exclude):
        raise ConfigError(f"exclude entries must be non-empty strings, got {config.exclude!r}")

