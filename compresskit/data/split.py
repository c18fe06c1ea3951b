"""``compresskit data split``: one COCO file and its image folder (the shape a labelling tool exports) into the
kit's layout, ``annotations/instances_{train,val}.json`` with ``train/`` and ``val/`` image folders.

The split is deterministic from its seed and works on *groups* of images: by default each image is its own group;
``group_by`` (a regular expression on ``file_name``) puts near-duplicates, such as the frames of one video or one
burst, in one group, so they never straddle train and val. Val is filled rarest category first: every category
with boxes in at least two groups gets one of them in val, while train keeps at least one. Images are linked
(hard links) or copied, never moved; the source files are only read. The whole output folder is written under a
temporary name and renamed into place at the end, so an interrupted or failing split leaves nothing behind.

Nothing is written outside ``out``: every ``file_name`` must stay inside the images folder (``data check`` refuses
``..``, absolute paths and the like), ``out`` may not be a symbolic link (the split would land wherever it points),
nor the images folder or a folder inside it (the split's files would mix with, and could replace, the sources).
Source images may be symbolic links (a shared store): they are read through, and the split holds the files.
"""

from __future__ import annotations

import hashlib
import os
import math
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from compresskit.data.check import check_dataset
from compresskit.data.files import _umask, atomic_write_json, read_json_file
from compresskit.data.safe_paths import confined, is_within, normalized_file_name
from compresskit.errors import ConfigError, DatasetError

SPLITS = ("train", "val")
IMAGE_MODES = ("link", "copy")


@dataclass(frozen=True)
class SplitConfig:
    """How to split (JSON-able; recorded in the manifest).

    Attributes:
        val_fraction: share of the images that go to val (by image count, whole groups at a time).
        seed: the one seed of the split.
        group_by: regular expression searched in each ``file_name``; images whose match (its first group when
            it has one) is the same stay together. None: every image alone.
        images: ``link`` (hard links, copies where the file system refuses them) or ``copy``.
    """

    val_fraction: float = 0.2
    seed: int = 0
    group_by: str | None = None
    images: str = "link"

    def __post_init__(self) -> None:
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}")
        if self.images not in IMAGE_MODES:
            raise ConfigError(f"images must be one of {IMAGE_MODES}, got {self.images!r}")
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as error:
                raise ConfigError(f"group_by {self.group_by!r} is not a regular expression: {error}") from None


# Below this many val images, `data split` says how coarse the val split's mAP is.
SMALL_VAL_IMAGES = 25


def map_resolution_points(boxes: int) -> float:
    """The smallest mAP difference (0-100 scale) a val split of ``boxes`` boxes can show: one box found or missed
    moves a category's AP by about one over that category's boxes, and so mAP by about one over all of them."""
    return 100 / boxes if boxes else math.inf


def small_val_warning(manifest: dict) -> str | None:
    """A warning when the val split is too small to tell detectors apart, with the size of the smallest mAP
    difference it can show; None when it is large enough.

    One box found or missed moves a category's AP by about one over that category's val boxes, so with ``B`` val
    boxes in all, mAP differences under about ``100 / B`` points (on the 0-100 scale) are one box's luck.
    """
    val = manifest["splits"]["val"]
    if val["images"] >= SMALL_VAL_IMAGES:
        return None
    boxes = val["boxes"]
    resolution = f"about {map_resolution_points(boxes):.1f} mAP points" if boxes else "nothing (it has no boxes)"
    return (f"warning: val has only {val['images']} images ({boxes} boxes): one box more or less found moves mAP by "
            f"{resolution}, so smaller differences between detectors are noise; a larger --val-fraction (or more "
            f"images) gives at least {SMALL_VAL_IMAGES} val images")


def group_key(file_name: str, pattern: re.Pattern | None, image_id: int) -> str:
    """The group an image belongs to: its ``pattern`` match (first group if any), else the image itself."""
    match = pattern.search(file_name) if pattern is not None else None
    if match is None:
        return f"image:{image_id}"
    return f"group:{match.group(1) if match.groups() else match.group(0)}"


def assign_groups(groups: dict[str, list[int]], categories_of: dict[int, set[int]], val_fraction: float,
                  seed: int) -> tuple[set[str], list[int]]:
    """Which groups go to val. Returns ``(val groups, categories that could not be in val)``.

    ``groups`` maps a group to its image ids, ``categories_of`` an image id to the category ids of its boxes.
    """
    rng = np.random.default_rng(seed)
    order = sorted(groups)
    order = [order[i] for i in rng.permutation(len(order))]
    group_categories = {g: set().union(*(categories_of.get(i, set()) for i in groups[g])) for g in order}
    groups_with = defaultdict(list)
    for g in order:
        for category in group_categories[g]:
            groups_with[category].append(g)
    target = max(1, round(val_fraction * sum(len(ids) for ids in groups.values())))
    val: set[str] = set()
    train_count = {category: len(owners) for category, owners in groups_with.items()}

    def movable(g: str) -> bool:  # moving g to val keeps every category it holds in train
        return all(train_count[category] > 1 for category in group_categories[g])

    def move(g: str) -> None:
        val.add(g)
        for category in group_categories[g]:
            train_count[category] -= 1

    unplaced = []
    for category in sorted(groups_with, key=lambda c: (len(groups_with[c]), c)):  # rarest first
        if any(g in val for g in groups_with[category]):
            continue
        candidates = [g for g in groups_with[category] if movable(g)]
        if not candidates:
            unplaced.append(category)
            continue
        move(min(candidates, key=lambda g: len(groups[g])))  # the smallest group: val stays near its target
    for g in order:
        if sum(len(groups[v]) for v in val) >= target:
            break
        if g not in val and movable(g):
            move(g)
    return val, sorted(unplaced)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def place_image(source: Path, target: Path, mode: str) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        try:
            # realpath: link(2) on Linux links a symbolic link itself (os.link's follow_symlinks does not reach it),
            # which would leave a link in the split, dangling when it was relative; the file is what is wanted.
            os.link(os.path.realpath(source), target)
            return "link"
        except OSError:  # another file system, or links not allowed: a copy does the same job
            pass
    shutil.copy2(source, target)  # follows a linked source too
    return "copy"


def _refuse_unsafe_out(images_dir: Path, out: Path) -> None:
    """Raise DatasetError, before anything is read or written, for an ``out`` the split must not write into."""
    if out.is_symlink():
        raise DatasetError(f"--out {out} is a symbolic link (to {os.readlink(out)}); the split would be written "
                           "wherever it points: give a new folder that is not a link (nothing was written)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty; split into a new folder (nothing was written)")
    if is_within(out, images_dir):
        raise DatasetError(f"--out {out} is the images folder {images_dir} or inside it; the split's files would "
                           "mix with the sources: give a folder outside --images (nothing was written)")
    if is_within(images_dir, out):
        raise DatasetError(f"--images {images_dir} is inside --out {out}; give an --out folder that does not hold "
                           "the sources (nothing was written)")


def split_dataset(annotation_file: Path | str, images_dir: Path | str, out: Path | str,
                  config: SplitConfig | None = None, progress: bool = False) -> dict:
    """Split a COCO dataset into the kit's layout under ``out`` (see the module doc).

    Args:
        annotation_file: the COCO JSON (a labelling tool's export).
        images_dir: the folder its ``file_name`` entries are relative to.
        out: a new or empty folder.
        config: see :class:`SplitConfig`.

    Returns:
        The manifest, also written to ``out/manifest.json``: source file and its SHA-256, config, per-split image,
        box and per-category counts, the groups, and the categories that could not be put in val.

    Raises:
        DatasetError: ``compresskit data check`` finds errors (they are listed), or ``out`` is not empty, is a
            symbolic link, or is (inside) the images folder. Nothing is written then.
    """
    config = config or SplitConfig()
    annotation_file, images_dir, out = Path(annotation_file), Path(images_dir), Path(out)
    _refuse_unsafe_out(images_dir, out)
    report = check_dataset(annotation_file, images_dir, progress=progress)
    report.raise_for_errors()
    data = read_json_file(annotation_file)
    images = {image["id"]: {**image, "file_name": normalized_file_name(image["file_name"])}
              for image in data["images"]}
    categories_of: dict[int, set[int]] = defaultdict(set)
    for annotation in data["annotations"]:
        categories_of[annotation["image_id"]].add(annotation["category_id"])
    pattern = re.compile(config.group_by) if config.group_by else None
    groups: dict[str, list[int]] = defaultdict(list)
    for image_id in sorted(images):
        groups[group_key(images[image_id]["file_name"], pattern, image_id)].append(image_id)
    if len(groups) < 2:
        raise DatasetError(f"{annotation_file} has {len(groups)} image group(s); a train/val split needs at least "
                           "two (check --group-by: it may put every image in one group)")
    val_groups, unplaced = assign_groups(groups, categories_of, config.val_fraction, config.seed)
    split_of = {image_id: "val" if g in val_groups else "train" for g, ids in groups.items() for image_id in ids}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes a private folder; the dataset is an ordinary one
        placed = defaultdict(int)
        documents = {}
        for split in SPLITS:
            chosen = [images[i] for i in sorted(images) if split_of[i] == split]
            kept = {image["id"] for image in chosen}
            for image in chosen:
                # confined(): the check refused unsafe names already; a name never leaves staging regardless.
                source, target = confined(images_dir, image["file_name"]), confined(staging / split, image["file_name"])
                placed[place_image(source, target, config.images)] += 1
            documents[split] = {**{key: value for key, value in data.items()
                                   if key not in ("images", "annotations")},
                                "images": [{**image, "file_name": f"{split}/{image['file_name']}"}
                                           for image in chosen],
                                "annotations": [a for a in data["annotations"] if a["image_id"] in kept]}
            atomic_write_json(staging / "annotations" / f"instances_{split}.json", documents[split])
        names = {c["id"]: c["name"] for c in data["categories"]}
        manifest = {
            "source": {"annotations": str(annotation_file), "sha256": _sha256(annotation_file),
                       "images_dir": str(images_dir)},
            "config": asdict(config),
            "splits": {split: {"images": len(doc["images"]), "boxes": len(doc["annotations"]),
                               "groups": sum(1 for g in groups if (g in val_groups) == (split == "val")),
                               "boxes_per_category": {names[c]: sum(1 for a in doc["annotations"]
                                                                    if a["category_id"] == c) for c in names}}
                       for split, doc in documents.items()},
            "not_in_val": [names[c] for c in unplaced],
            "images_placed": dict(placed),
            "groups": {g: {"split": "val" if g in val_groups else "train", "images": len(ids)}
                       for g, ids in groups.items() if len(ids) > 1},
        }
        atomic_write_json(staging / "manifest.json", manifest, indent=1)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
