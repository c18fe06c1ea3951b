"""Evaluation: COCO bbox mAP of any torchvision-style detector with pycocotools' COCOeval.

``evaluate(model, data_loader)`` runs the model (eval mode, list of images in, list of detection dicts out), maps
predicted labels back to category ids and returns the six headline metrics. Introduced in
``00_setup_and_data.ipynb`` (how mAP is computed) and ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import contextlib
import io

import torch
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm.auto import tqdm

from compresskit.data.dataset import LabelMap

METRIC_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
VAL_SUBSET_IMAGES = 100  # the fixed val slice shipped checkpoints are re-checked on (the first N images)


def val_subset(dataset, images: int = VAL_SUBSET_IMAGES) -> torch.utils.data.Subset:
    """The first ``images`` items of ``dataset``: a fixed, quick evaluation slice."""
    return torch.utils.data.Subset(dataset, range(min(images, len(dataset))))


def dataset_and_ids(data) -> tuple:
    """The kit dataset under ``data`` (a loader, a ``Subset`` or the dataset itself) and the image ids it reads,
    in order."""
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset.dataset, [dataset.dataset.ids[i] for i in dataset.indices]
    return dataset, list(dataset.ids)


def coco_metrics(coco_gt, detections: list[dict], image_ids: list[int], verbose: bool = False) -> dict[str, float]:
    """COCOeval bbox metrics for ``detections`` (COCO result dicts) over ``image_ids``.

    With no detections at all every metric is 0.0 (nothing was found), not COCOeval's -1 ("no ground truth").
    An area range without any ground truth stays ``None``: there is nothing to measure there.
    """
    if not detections:
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()) as log:
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(log.getvalue())
    stats = evaluator.stats[:6]
    return {name: (round(float(value), 6) if value >= 0 else None) for name, value in zip(METRIC_NAMES, stats)}


def ground_truth_from_boxes(boxes_xywh: list[list[float]], width: int = 100, height: int = 100,
                            category_id: int = 1):
    """A one-image COCO ground truth with the given boxes: for worked examples and tests of the metric."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "file_name": "example.jpg", "width": width, "height": height}],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": category_id, "bbox": list(box),
                                     "area": box[2] * box[3], "iscrowd": 0} for i, box in enumerate(boxes_xywh)],
                    "categories": [{"id": category_id, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@torch.inference_mode()
def predict(model: nn.Module, data_loader, label_map: LabelMap, device: torch.device | str = "cpu",
            progress: bool = True, desc: str = "evaluate") -> list[dict]:
    """Run ``model`` over the loader and return COCO-format results (category ids, xywh boxes, scores).

    Args:
        model: a torchvision-style detector (switched to eval mode).
        data_loader: yields ``(images, targets)``; each target carries its ``image_id``.
        label_map: maps the model's labels back to category ids; the background slot is dropped.
        desc: the progress bar's label (say which variant is evaluated when several are).

    Returns:
        ``[{"image_id", "bbox", "category_id", "score"}]``, as ``COCO.loadRes`` takes them.
    """
    model.eval()
    results = []
    for images, targets in tqdm(data_loader, desc=desc, leave=False, disable=not progress):
        outputs = model([image.to(device) for image in images])
        for target, output in zip(targets, outputs):
            boxes = output["boxes"].cpu()
            boxes[:, 2:] -= boxes[:, :2]
            for box, label, score in zip(boxes.tolist(), output["labels"].tolist(), output["scores"].tolist()):
                if label in label_map.labels:  # the background slot never maps to a category
                    results.append({"image_id": int(target["image_id"]), "bbox": [round(v, 2) for v in box],
                                    "category_id": label_map.to_category_id(label), "score": round(score, 5)})
    return results


def evaluate(model: nn.Module, data_loader, label_map: LabelMap | None = None, device: torch.device | str = "cpu",
             progress: bool = True, verbose: bool = False, desc: str = "evaluate") -> dict[str, float]:
    """COCO bbox mAP of ``model`` on ``data_loader``'s dataset (or the Subset it wraps).

    Args:
        model: a torchvision-style detector.
        data_loader: over a COCO-format dataset of the kit, or a ``Subset`` of one (see :func:`val_subset`).
        label_map: maps predicted labels back to category ids (default: the dataset's).
        verbose: print COCOeval's summary table.
        desc: the progress bar's label.

    Returns:
        ``map``, ``map50``, ``map75``, ``map_small/medium/large``: COCOeval's 0-1 values.
    """
    dataset, image_ids = dataset_and_ids(data_loader)
    detections = predict(model, data_loader, label_map or dataset.label_map, device=device, progress=progress,
                         desc=desc)
    return coco_metrics(dataset.coco, detections, image_ids, verbose=verbose)
