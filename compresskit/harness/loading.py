"""Profile-aware loading for studies: the detector and the data come from the same profile, and the records say
which one (docs/method.md, "Two profiles"). Lessons and ``compresskit reproduce`` load through here, never around it.

Two loaders: :func:`load_for_study` for every preset and shipped variant by name (or a checkpoint file of one),
and :func:`load_trained` for a trained variant that may ship only its training record. Introduced in
``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from compresskit import settings
from compresskit.data import profile_split
from compresskit.engine import make_loader, val_subset

STUDY_PRESETS = ("teacher", "student")  # loaded for either profile; shipped variants are embedded-only


@dataclass
class Loaded:
    """A detector as loaded for a study: the model, its label map and training metadata, and the profile
    (``custom`` with ``data_dir``: a kit-layout dataset of your own, read through the detector's label map)."""

    name: str
    model: nn.Module
    label_map: Any
    meta: dict
    profile: str
    data_dir: Path | None = None


def _preset_of(name: str) -> str:
    """The preset a detector name belongs to: ``teacher_pruned`` -> ``teacher`` (its data and label map)."""
    preset = name.split("_", 1)[0]
    if preset not in STUDY_PRESETS:
        from compresskit.errors import ConfigError

        raise ConfigError(f"{name!r} names no preset; a detector name starts with one of {', '.join(STUDY_PRESETS)}")
    return preset


def _shipped_variants() -> tuple[str, ...]:
    from compresskit.models import shipped_checkpoint

    folder = shipped_checkpoint("teacher").parent
    return tuple(sorted(path.stem for path in folder.glob("*.pt") if path.stem not in STUDY_PRESETS))


def load_for_study(name: str, profile: str | None = None, checkpoint=None, data_dir=None) -> Loaded:
    """Detector ``name`` of ``profile`` (default ``COMPRESSKIT_PROFILE``), as a study loads it.

    ``name`` is a preset (``teacher``, ``student``: the shipped embedded checkpoint, or torchvision's
    COCO-pretrained detector for the coco profile) or a variant shipped in the package (``teacher_pruned``,
    ``teacher_bnhead``, ...: embedded profile only, with its own label map and training metadata). With
    ``checkpoint``, that file is loaded instead, with the data and label map of ``name``'s preset; with
    ``checkpoint`` and ``data_dir`` (a ``compresskit data split`` folder), the file's own label map and that
    dataset, checked first (profile ``custom``; ``name`` is then the checkpoint's preset, when it names one).
    """
    from compresskit.errors import ConfigError
    from compresskit.models import load_checkpoint, load_detector, shipped_checkpoint

    if data_dir is not None:
        from compresskit.data import require_clean_layout

        if checkpoint is None:
            raise ConfigError("a dataset of your own needs the checkpoint fine-tuned on it: pass --checkpoint FILE "
                              "(compresskit train --data DIR writes one)")
        require_clean_layout(data_dir)  # bad data stops here, with the check's messages, before anything is written
        model, label_map, meta = load_checkpoint(checkpoint)
        return Loaded(name=meta.get("preset") or name, model=model, label_map=label_map, meta=meta,
                      profile="custom", data_dir=Path(data_dir))
    profile = profile or settings.profile()
    if checkpoint is not None:
        base = load_for_study(_preset_of(name), profile)
        model, _, meta = load_checkpoint(checkpoint)
        return Loaded(name=name, model=model, label_map=base.label_map, meta=meta, profile=base.profile)
    if name in STUDY_PRESETS:
        model, label_map, meta = load_detector(name, profile=profile)
        return Loaded(name=name, model=model, label_map=label_map, meta=meta, profile=profile)
    if not shipped_checkpoint(name).is_file():
        raise ConfigError(f"unknown detector {name!r}; choose a preset ({', '.join(STUDY_PRESETS)}) or a shipped "
                          f"variant ({', '.join(_shipped_variants())})")
    if profile != "embedded":
        raise ConfigError(f"{name} is shipped for the embedded profile only; use {' or '.join(STUDY_PRESETS)}")
    model, label_map, meta = load_checkpoint(shipped_checkpoint(name))
    return Loaded(name=name, model=model.eval(), label_map=label_map, meta=meta, profile=profile)


def val_loader(loaded: Loaded, images: int | None = None, batch_size: int = 8):
    """The val split of ``loaded``'s profile, read with its label map; the first ``images`` only when given (a
    fixed slice, so lessons stay short)."""
    dataset = _split(loaded, "val", augment=False)
    if images is not None:
        dataset = val_subset(dataset, images)
    return make_loader(dataset, batch_size=batch_size, train=False)


def require_embedded(loaded: Loaded, what: str) -> None:
    """Stop a study whose trained variants exist for the embedded dataset only, naming them and the fix."""
    from compresskit.errors import CompressKitError

    if loaded.profile != "embedded":
        raise CompressKitError(f"the {what} are trained on the embedded dataset; run this study with "
                               f"{settings.PROFILE_ENV}=embedded")


def train_split(loaded: Loaded, augment: bool = True):
    """The train split of ``loaded``'s profile, read with its label map: augmented for fine-tuning, plain
    (``augment=False``) for calibration."""
    return _split(loaded, "train", augment)


def _split(loaded: Loaded, split: str, augment: bool):
    if loaded.data_dir is not None:
        from compresskit.data import load_split

        return load_split(split, loaded.data_dir, label_map=loaded.label_map, train_transforms=augment)
    return profile_split(split, profile=loaded.profile, label_map=loaded.label_map, train_transforms=augment)


def training_record(name: str) -> dict:
    """The metadata a training run wrote beside checkpoint ``name`` (``checkpoints/NAME.json`` in the package)."""
    import json

    from compresskit.errors import CompressKitError
    from compresskit.models import shipped_checkpoint

    path = shipped_checkpoint(name).with_suffix(".json")
    if not path.is_file():
        raise CompressKitError(f"the package has no training record {path.name}; its README section on the "
                               "reference runs gives the command that writes it")
    return json.loads(path.read_text(encoding="utf-8"))


def load_trained(name: str, untrained: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict, bool]:
    """Checkpoint ``name`` of the package: ``(detector, training metadata, shipped)``.

    The package keeps its checkpoints under 50 MB, so some trained variants ship only their training record. Then
    ``untrained(meta)`` builds the same architecture with untrained weights and ``shipped`` is False: good for MACs,
    parameters, raw size and latency (none depends on the weights' values), not for the gzip size or mAP, which the
    training run measured on the fp16 weights it wrote (``meta["val_metrics"]``).
    """
    from compresskit.models import load_checkpoint, shipped_checkpoint

    path = shipped_checkpoint(name)
    if path.is_file():
        detector, _, meta = load_checkpoint(path)
        return detector, meta, True
    meta = training_record(name)
    return untrained(meta).eval(), meta, False
