"""Profile-aware loading for studies: the detector and the data come from the same profile, and the records say
which one (DESIGN section 4). Lessons and ``compresskit reproduce`` load through here, never around it.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from compresskit import settings
from compresskit.data import profile_split
from compresskit.engine import make_loader, val_subset


@dataclass
class Loaded:
    """A detector as loaded for a study: the model, its label map and training metadata, and the profile."""

    name: str
    model: nn.Module
    label_map: Any
    meta: dict
    profile: str


def load_for_study(name: str, profile: str | None = None) -> Loaded:
    """Preset ``name`` of ``profile`` (default ``COMPRESSKIT_PROFILE``): the shipped embedded checkpoint, or
    torchvision's COCO-pretrained detector for the coco profile."""
    from compresskit.models import load_detector

    profile = profile or settings.profile()
    model, label_map, meta = load_detector(name, profile=profile)
    return Loaded(name=name, model=model, label_map=label_map, meta=meta, profile=profile)


def val_loader(loaded: Loaded, images: int | None = None, batch_size: int = 8):
    """The val split of ``loaded``'s profile, read with its label map; the first ``images`` only when given (a
    fixed slice, so lessons stay short)."""
    dataset = profile_split("val", profile=loaded.profile, label_map=loaded.label_map)
    if images is not None:
        dataset = val_subset(dataset, images)
    return make_loader(dataset, batch_size=batch_size, train=False)


def train_split(loaded: Loaded, augment: bool = True):
    """The train split of ``loaded``'s profile, read with its label map: augmented for fine-tuning, plain
    (``augment=False``) for calibration."""
    return profile_split("train", profile=loaded.profile, label_map=loaded.label_map, train_transforms=augment)
