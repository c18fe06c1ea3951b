"""Work a run does once: identical evaluations and quantizations across the studies of ``compresskit reproduce``.

``compresskit reproduce`` measures the fp32 teacher in every study (each study's speed-ups are paired with its
own teacher runs), but its mAP on the same val images cannot change between studies: the same weights, module
settings and runtime file give the same detections. Evaluation and quantization are deterministic, so a later
record takes the metrics (or the int8 file) of the first identical one instead of computing them again; its
latency, size and counts are still measured in its own study. Variants that cannot be identified safely (a
compiled core, a core the harness did not build) are always evaluated.

The state is explicit: a :class:`ReuseCache` that the run creates and hands to each :class:`~compresskit.harness.Study`
(``Study(..., reuse=cache)``); a study without one computes everything itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def _module_fingerprint(detector: nn.Module, digest) -> bool:
    """Feed the detector's structure, scalar settings and every tensor of its state into ``digest``; False when
    some state cannot be read as plain bytes (then the variant is not identified)."""
    digest.update(repr(detector).encode())
    for name, module in detector.named_modules():
        settings = {key: value for key, value in vars(module).items() if not key.startswith("_")
                    and isinstance(value, (bool, int, float, str, tuple, type(None)))}
        digest.update(f"{name}:{sorted(settings.items())!r}".encode())
    for name, tensor in detector.state_dict().items():
        if not hasattr(tensor, "dtype") or tensor.is_quantized or tensor.layout != torch.strided:
            return False
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return True


def fingerprint(detector: nn.Module, *context: Any) -> str | None:
    """A key for work on ``detector`` (structure, settings, every tensor) in ``context`` (compared by repr, so
    plain values only), or None when the detector cannot be identified."""
    digest = hashlib.sha256()
    if not _module_fingerprint(detector, digest):
        return None
    digest.update(repr(context).encode())
    return digest.hexdigest()


def dataset_identity(data: Any) -> tuple | None:
    """What a dataset, a ``Subset`` of one or a loader over either reads: annotation file, image folder and image
    ids in order; None when its items are randomly transformed (augmentation), so that reading it twice differs."""
    from compresskit.engine.evaluation import dataset_and_ids

    try:
        dataset, image_ids = dataset_and_ids(data)
    except AttributeError:  # not a kit dataset: nothing names its images
        return None
    if getattr(dataset, "transforms", None) is not None:
        return None
    return (str(getattr(dataset, "annotation_file", "")), str(getattr(dataset, "root", "")), tuple(image_ids))


class ReuseCache:
    """Results of deterministic work, kept by key for the rest of a run: ``key -> (source, value)``, where
    ``source`` names what produced the value (a record id, a file) for the log line of a later reuse.

    Keys come from :func:`fingerprint` (None: not identified, never kept nor found)."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[str, Any]] = {}

    def recall(self, key: str | None) -> tuple[str, Any] | None:
        """``(source, value)`` kept under ``key``, or None."""
        return None if key is None else self._kept.get(key)

    def remember(self, key: str | None, source: str, value: Any) -> None:
        """Keep ``value`` (produced by ``source``) under ``key``; a None key keeps nothing."""
        if key is not None:
            self._kept[key] = (source, value)

    def __repr__(self) -> str:
        return f"ReuseCache({len(self._kept)} kept)"
