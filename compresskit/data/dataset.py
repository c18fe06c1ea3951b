"""COCO-format datasets on disk as torch Datasets, shaped like torchvision's detection references.

One class serves both profiles (the embedded set and the COCO subset) and a user's own data: images plus an
``instances_*.json``. Targets follow torchvision's detection convention (``boxes`` xyxy float, ``labels`` int64)
so any torchvision detector trains and evaluates on them unchanged.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from compresskit.data.files import read_json_file
from compresskit.data.safe_paths import confined, file_name_problem
from compresskit.data.values import is_int, is_number, one_line, shown
from compresskit.errors import DatasetError

# What pycocotools' index and this loader read of each record; `compresskit data check` checks much more.
_INDEXED_KEYS = {"images": ("id", "file_name"), "annotations": ("id", "image_id", "category_id", "bbox"),
                 "categories": ("id", "name")}
_ID_KEYS = {"images": ("id",), "annotations": ("id", "image_id", "category_id"), "categories": ("id",)}
_CHECK_HINT = "(`compresskit data check` lists every problem)"


@dataclass(frozen=True)
class LabelMap:
    """Training labels <-> COCO category ids.

    COCO's category ids have holes (1..90, 80 used), so a detector's class index is not a category id.
    ``contiguous`` numbers categories 1..K (0 stays background, torchvision's convention); ``identity`` uses the
    category id itself as the label, which is how torchvision's COCO-pretrained detectors (91 classes) predict.
    """

    category_ids: tuple[int, ...]
    labels: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def contiguous(cls, categories: list[dict]) -> "LabelMap":
        cats = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in cats), tuple(range(1, len(cats) + 1)), tuple(c["name"] for c in cats))

    @classmethod
    def identity(cls, categories: list[dict]) -> "LabelMap":
        cats = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in cats), tuple(c["id"] for c in cats), tuple(c["name"] for c in cats))

    @property
    def num_classes(self) -> int:
        """Classifier width including the background slot 0."""
        return max(self.labels) + 1

    def to_label(self, category_id: int) -> int:
        return self.labels[self.category_ids.index(category_id)]

    def to_category_id(self, label: int) -> int:
        return self.category_ids[self.labels.index(label)]

    def name_of_label(self, label: int) -> str:
        return self.names[self.labels.index(label)]

    def to_json(self) -> dict:
        return {"category_ids": list(self.category_ids), "labels": list(self.labels), "names": list(self.names)}

    @classmethod
    def from_json(cls, doc: dict) -> "LabelMap":
        return cls(tuple(doc["category_ids"]), tuple(doc["labels"]), tuple(doc["names"]))


def load_coco(annotation_file: Path | str) -> COCO:
    """pycocotools' COCO index of a file, with its chatter silenced and bad files turned into DatasetError."""
    annotation_file = Path(annotation_file)
    document = read_json_file(annotation_file)
    _require_indexable(annotation_file, document)
    coco = COCO()
    coco.dataset = document
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _require_indexable(annotation_file: Path, document: object) -> None:
    """Raise DatasetError unless pycocotools can index ``document``: three lists of objects with the keys it reads
    and integer ids (a list or ``true`` as an id would crash the index or silently alias another record)."""
    if not isinstance(document, dict):
        raise DatasetError(f"{annotation_file}: top level is a JSON {type(document).__name__}, not an object; a COCO "
                           "detection file is an object with images, annotations and categories")
    missing = [key for key in _INDEXED_KEYS if key not in document]
    if missing:
        raise DatasetError(f"{annotation_file}: missing top-level key(s) {missing}; a COCO detection file needs "
                           "images, annotations and categories")
    for section, keys in _INDEXED_KEYS.items():
        records = document[section]
        if not isinstance(records, list):
            raise DatasetError(f"{annotation_file}: '{section}' is a {type(records).__name__}, not a list; make it a "
                               "JSON list of objects")
        for index, record in enumerate(records):
            where = f"{annotation_file}: {section}[{index}]"
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: entry is a {type(record).__name__}, not an object {_CHECK_HINT}")
            absent = [key for key in keys if key not in record]
            if absent:
                raise DatasetError(f"{where}: missing key(s) {', '.join(absent)}; add them (the loader reads "
                                   f"{', '.join(keys)}) {_CHECK_HINT}")
            for key in _ID_KEYS[section]:
                if not is_int(record[key]):
                    raise DatasetError(f"{where}: {key} {shown(record[key])} is not an integer; use integer ids as "
                                       f"COCO does {_CHECK_HINT}")


def _named(ids, names: dict) -> str:
    shown_ids = sorted(ids)
    text = ", ".join(f"{category_id} {one_line(str(names.get(category_id, '?')), 40)}" for category_id in shown_ids[:8])
    return text + (f" and {len(shown_ids) - 8} more" if len(shown_ids) > 8 else "")


class CocoDetection(torch.utils.data.Dataset):
    """Images and targets from a COCO-format annotation file.

    Args:
        root: folder that ``file_name`` entries are relative to.
        annotation_file: the ``instances_*.json``.
        transforms: a torchvision ``v2`` transform taking ``(image, target)``; see :func:`detection_transforms`.
        label_map: defaults to contiguous labels over the file's categories.

    Each item is ``(image float tensor CxHxW in [0, 1], target dict)`` with ``boxes`` (xyxy), ``labels``,
    ``image_id``, ``area`` and ``iscrowd``. Crowd regions are left out of the training targets; evaluation reads
    them from the annotation file, where COCOeval treats them as "ignore" regions, as COCO intends.
    """

    def __init__(self, root: Path | str, annotation_file: Path | str, transforms=None,
                 label_map: LabelMap | None = None) -> None:
        self.root = Path(root)
        self.annotation_file = Path(annotation_file)
        self.coco = load_coco(self.annotation_file)
        self.label_map = label_map or LabelMap.contiguous(self.coco.dataset["categories"])
        self._label_map_given = label_map is not None  # a detector's: its categories may not be this file's
        self.transforms = transforms
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise DatasetError(f"{self.annotation_file}: the dataset has no images")
        if not self.label_map.category_ids:
            raise DatasetError(f"{self.annotation_file}: the dataset has no categories; add the categories its "
                               "boxes belong to")
        self._validate()

    def _refuse_other_categories(self, known: set) -> None:
        """A detector trained on other categories than this file's boxes: one message naming both sets (the
        per-annotation check below would blame the dataset for a category the detector never learned)."""
        file_names = {c["id"]: c.get("name") for c in self.coco.dataset["categories"] if isinstance(c, dict)}
        used = {ann["category_id"] for ann in self.coco.dataset["annotations"] if is_int(ann.get("category_id"))}
        unknown = (used - known) & set(file_names)  # one the file itself does not define is the file's fault
        if not unknown:
            return
        detector_names = dict(zip(self.label_map.category_ids, self.label_map.names))
        raise DatasetError(f"the detector and {self.annotation_file} disagree on categories: the detector was trained "
                           f"on {_named(known, detector_names)}, but the file's boxes also use "
                           f"{_named(unknown, file_names)}. Use the dataset the detector was trained on, or fine-tune "
                           "it on this one first (compresskit train --preset NAME --data SPLIT --init shipped)")

    def _validate(self) -> None:
        """Refuse, before any file is opened, what would crash a DataLoader worker or leave the images folder."""
        for image in self.coco.dataset["images"]:
            unsafe = file_name_problem(image["file_name"])
            if unsafe is not None:
                raise DatasetError(f"{self.annotation_file}: image id={image['id']}: file_name {unsafe[0]}; "
                                   f"{unsafe[1]} {_CHECK_HINT}")
        known = set(self.label_map.category_ids)
        if self._label_map_given:
            self._refuse_other_categories(known)
        for ann in self.coco.dataset["annotations"]:
            where = f"{self.annotation_file}: annotation id={ann['id']}"
            if ann["category_id"] not in known:
                raise DatasetError(f"{where}: unknown category_id {ann['category_id']}; add it to "
                                   f"'categories' or remove the annotation {_CHECK_HINT}")
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
                raise DatasetError(f"{where}: bbox {shown(bbox)} is not 4 finite numbers [x, y, width, height]; fix "
                                   f"or remove it {_CHECK_HINT}")
            if bbox[2] <= 0 or bbox[3] <= 0:
                raise DatasetError(f"{where}: degenerate box {shown(bbox)} (width and height must be > 0); fix or "
                                   f"remove it {_CHECK_HINT}")
            if "area" in ann and not is_number(ann["area"]):
                raise DatasetError(f"{where}: area {shown(ann['area'])} is not a finite number; set it in pixels² "
                                   f"or leave it out {_CHECK_HINT}")
            if ann.get("iscrowd", 0) not in (0, 1):
                raise DatasetError(f"{where}: iscrowd is {shown(ann['iscrowd'])}, not 0 or 1; set it to 0 or 1 "
                                   f"{_CHECK_HINT}")
            if ann["image_id"] not in self.coco.imgs:
                raise DatasetError(f"{where}: image_id {ann['image_id']} is not in 'images'")

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        info = self.coco.imgs[image_id]
        path = confined(self.root, info["file_name"])  # checked in _validate; reading through links is fine
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # grayscale and CMYK files exist in real COCO
        except FileNotFoundError:
            raise DatasetError(f"{self.annotation_file}: image id={image_id}: file {path} is missing; restore it "
                               "or remove the image from the annotation file") from None
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, DecompressionBombError, SyntaxError...
            raise DatasetError(f"{self.annotation_file}: image id={image_id}: {path} cannot be read "
                               f"({type(exc).__name__}: {one_line(str(exc))}); replace the file") from None

    def load_target(self, image_id: int, width: int, height: int) -> dict:
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        # float() first: torch cannot take a JSON integer beyond int64 (10**30 is a valid, if absurd, number)
        boxes = torch.tensor([[float(v) for v in a["bbox"]] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes lying wholly outside vanish
        labels = torch.tensor([self.label_map.to_label(a["category_id"]) for a in anns], dtype=torch.int64)
        area = torch.tensor([float(a.get("area", float(a["bbox"][2]) * float(a["bbox"][3]))) for a in anns],
                            dtype=torch.float32)
        return {"boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
                "labels": labels[keep], "image_id": image_id, "area": area[keep],
                "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64)}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[index]
        image = self.load_image(image_id)
        target = self.load_target(image_id, *image.size)
        image = tv_tensors.Image(v2.functional.pil_to_tensor(image))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        return v2.functional.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor), target


def detection_transforms(train: bool) -> v2.Compose | None:
    """Training augmentation: flips and colour jitter. Every embedded shape is mirror-symmetric and colour carries
    no class, so neither changes a label. Evaluation uses no transform (the detector resizes internally)."""
    if not train:
        return None
    return v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomPhotometricDistort(p=0.5)])


def collate_fn(batch):
    """Keep images and targets as tuples: detectors take a list of differently sized images."""
    return tuple(zip(*batch))
