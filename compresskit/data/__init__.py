"""COCO-format data: the dataset class, the embedded generator, the COCO subset builder and ``check``."""

from __future__ import annotations

from pathlib import Path

from compresskit.data.dataset import CocoDetection, LabelMap, collate_fn, detection_transforms, load_coco
from compresskit.data.embedded import CATEGORIES, EmbeddedConfig, embedded_dataset_dir, generate_embedded
from compresskit.errors import DatasetError

__all__ = ["CATEGORIES", "CocoDetection", "EmbeddedConfig", "LabelMap", "collate_fn", "detection_transforms",
           "embedded_dataset_dir", "generate_embedded", "load_coco", "load_split", "profile_split",
           "require_clean_layout"]


def load_split(split: str, root: Path | str | None = None, train_transforms: bool | None = None,
               label_map: LabelMap | None = None) -> CocoDetection:
    """The ``train`` or ``val`` split of a kit-layout dataset folder (default: the cached embedded dataset).

    A kit-layout folder holds ``annotations/instances_{split}.json`` with ``file_name`` relative to the folder.
    """
    root = Path(root) if root is not None else embedded_dataset_dir()
    annotations = root / "annotations" / f"instances_{split}.json"
    augment = split.startswith("train") if train_transforms is None else train_transforms
    return CocoDetection(root, annotations, transforms=detection_transforms(augment), label_map=label_map)


def require_clean_layout(root: Path | str, progress: bool = False) -> None:
    """Run ``data check`` on both splits of a kit-layout folder before anything trains or measures on it.

    Raises:
        DatasetError: listing every error of either split with its fix (warnings pass).
    """
    from compresskit.data.check import check_dataset

    root = Path(root)
    missing = [split for split in ("train", "val") if not (root / "annotations" / f"instances_{split}.json").exists()]
    if missing and root.is_dir():
        exports = sorted(path.name for path in root.glob("*.json"))
        found = f" (it holds {', '.join(exports[:3])}: a labelling tool's export?)" if exports else ""
        raise DatasetError(f"{root} is not a split folder: it has no annotations/instances_{missing[0]}.json"
                           f"{found}. Run `compresskit data split FILE.json --images IMAGES --out SPLIT` "
                           "first and pass --data SPLIT")
    for split in ("train", "val"):
        check_dataset(root / "annotations" / f"instances_{split}.json", root, progress=progress).raise_for_errors()


def profile_split(split: str, profile: str | None = None, label_map: LabelMap | None = None,
                  train_transforms: bool | None = None) -> CocoDetection:
    """The ``train`` or ``val`` split of a data profile (default: ``COMPRESSKIT_PROFILE``), augmented for training
    when ``train_transforms`` is True (default: for the train split only; calibration wants it off).

    ``embedded`` gives the generated dataset; ``coco`` builds (once, then reuses) the pinned COCO 2017 subset of
    ``data/recipes`` (or of ``COMPRESSKIT_COCO_RECIPES``) — downloaded, or copied from ``COMPRESSKIT_COCO_ROOT``
    — and reads it with the same class.
    """
    from compresskit import settings
    from compresskit.data.coco_subset import build_coco_subset, default_subset_dir, profile_recipe

    if (profile or settings.profile()) == "embedded":
        return load_split(split, label_map=label_map, train_transforms=train_transforms)
    recipe = profile_recipe("train2017" if split == "train" else "val2017")
    out = default_subset_dir(recipe)
    build_coco_subset(out, recipe, coco_root=settings.coco_root())
    return CocoDetection(out, out / "annotations" / f"instances_{recipe.split}.json",
                         transforms=detection_transforms(split == "train" if train_transforms is None
                                                         else train_transforms), label_map=label_map)
