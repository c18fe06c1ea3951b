"""COCO-format datasets on disk as torch Datasets, shaped like torchvision's detection references.

One class serves both profiles (the embedded set and the COCO subset) and a user's own data: images plus an
``instances_*.json``. Targets follow torchvision's detection convention (``boxes`` xyxy float, ``labels`` int64)
so any torchvision detector trains and evaluates on them unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from compresskit.data.files import describe_json_error
from compresskit.errors import DatasetError


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
    try:
        document = json.loads(annotation_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{annotation_file}: annotation file not found") from None
    except json.JSONDecodeError as exc:
        what, fix = describe_json_error(annotation_file, exc)
        raise DatasetError(f"{annotation_file}: {what}; {fix}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{annotation_file}: not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save it as UTF-8 JSON") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in document]
    if missing:
        raise DatasetError(f"{annotation_file}: missing top-level key(s) {missing}; a COCO detection file needs "
                           "images, annotations and categories")
    coco = COCO()
    coco.dataset = document
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


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
        self.transforms = transforms
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise DatasetError(f"{self.annotation_file}: the dataset has no images")
        self._validate()

    def _validate(self) -> None:
        known = set(self.label_map.category_ids)
        for ann in self.coco.dataset["annotations"]:
            where = f"{self.annotation_file}: annotation id={ann.get('id')}"
            if ann.get("category_id") not in known:
                raise DatasetError(f"{where}: unknown category_id {ann.get('category_id')}; add it to "
                                   "'categories' or remove the annotation (`compresskit data check` lists all)")
            bbox = ann.get("bbox")
            if not bbox or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
                raise DatasetError(f"{where}: degenerate box {bbox} (width and height must be > 0); fix or "
                                   "remove it (`compresskit data check` lists all)")
            if ann.get("image_id") not in self.coco.imgs:
                raise DatasetError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        info = self.coco.imgs[image_id]
        path = self.root / info["file_name"]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # grayscale and CMYK files exist in real COCO
        except FileNotFoundError:
            raise DatasetError(f"{self.annotation_file}: image id={image_id}: file {path} is missing; restore it "
                               "or remove the image from the annotation file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{self.annotation_file}: image id={image_id}: {path} cannot be read ({exc}); "
                               "replace the file") from None

    def load_target(self, image_id: int, width: int, height: int) -> dict:
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes lying wholly outside vanish
        labels = torch.tensor([self.label_map.to_label(a["category_id"]) for a in anns], dtype=torch.int64)
        area = torch.tensor([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=torch.float32)
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
