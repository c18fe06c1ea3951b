"""Detections on images: a dataset's ground-truth boxes, and each model's predictions next to them.

Functions return a bare matplotlib ``Figure`` (nothing is shown or saved behind the caller's back; a notebook shows
it as a cell's last expression). Introduced in ``00_setup_and_data.ipynb``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from compresskit.data.dataset import LabelMap

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
           "#008080"]


def draw_boxes(ax, image: torch.Tensor, boxes: torch.Tensor, labels: Sequence[int], label_map: LabelMap,
               scores: Sequence[float] | None = None, title: str | None = None) -> None:
    """Draw ``image`` (CxHxW in [0, 1]) with xyxy ``boxes`` coloured by class on a matplotlib axes."""
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    for index, (box, label) in enumerate(zip(boxes.tolist(), list(labels))):
        label = int(label)
        colour = PALETTE[label_map.labels.index(label) % len(PALETTE)] if label in label_map.labels else "white"
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        name = label_map.name_of_label(label) if label in label_map.labels else str(label)
        text = name if scores is None else f"{name} {float(scores[index]):.2f}"
        ax.text(x0, y0, text, color="black", fontsize=6, backgroundcolor=colour, va="bottom")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def sample_grid(dataset, indices: Sequence[int], columns: int = 3, title: str | None = None,
                size: float = 3.0) -> Figure:
    """A grid of dataset images with their ground-truth boxes."""
    rows = (len(indices) + columns - 1) // columns
    figure = Figure(figsize=(size * columns, size * rows))
    for slot, index in enumerate(indices):
        image, target = dataset[index]
        ax = figure.add_subplot(rows, columns, slot + 1)
        draw_boxes(ax, image, target["boxes"], target["labels"].tolist(), dataset.label_map,
                   title=f"image id {target['image_id']}")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


@torch.inference_mode()
def predictions_vs_truth(models: dict, dataset, indices: Sequence[int], label_map: LabelMap,
                         score_threshold: float = 0.4, size: float = 3.0) -> Figure:
    """One row per image: ground truth, then each model's detections above ``score_threshold``."""
    columns = 1 + len(models)
    figure = Figure(figsize=(size * columns, size * len(indices)))
    for row, index in enumerate(indices):
        image, target = dataset[index]
        ax = figure.add_subplot(len(indices), columns, row * columns + 1)
        draw_boxes(ax, image, target["boxes"], target["labels"].tolist(), label_map, title="ground truth")
        for column, (name, model) in enumerate(models.items()):
            output = model.eval()([image])[0]
            keep = output["scores"] >= score_threshold
            ax = figure.add_subplot(len(indices), columns, row * columns + column + 2)
            draw_boxes(ax, image, output["boxes"][keep], output["labels"][keep].tolist(), label_map,
                       scores=output["scores"][keep].tolist(), title=name)
    figure.tight_layout()
    return figure



def labels_and_teacher_boxes(images: Sequence[torch.Tensor], targets: Sequence[dict], trained_on: Sequence[dict],
                             label_map: LabelMap, size: float = 3.0) -> Figure:
    """One row per image: its labelled boxes, then the boxes box distillation added to them (the targets the
    student trained on, ``trained_on``, beyond the labelled ones; ``compresskit.distill.BoxDistiller``)."""
    figure = Figure(figsize=(2 * size, size * len(images)))
    for row, (image, target, merged) in enumerate(zip(images, targets, trained_on)):
        labelled = len(target["boxes"])
        draw_boxes(figure.add_subplot(len(images), 2, 2 * row + 1), image, target["boxes"],
                   target["labels"].tolist(), label_map, title=f"labelled: {labelled} boxes")
        draw_boxes(figure.add_subplot(len(images), 2, 2 * row + 2), image, merged["boxes"][labelled:],
                   merged["labels"][labelled:].tolist(), label_map,
                   title=f"added by the teacher: {len(merged['boxes']) - labelled}")
    figure.tight_layout()
    return figure
