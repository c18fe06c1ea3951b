"""Split a single-stage detector into an exportable tensor **core** and its eager pre/post-processing.

The core is ``backbone + FPN + head``: an image batch tensor in, head tensors out — all the convolutions, so it
is what pruning, quantization and ONNX export act on. :class:`EndToEndDetector` puts any core (the eager module, an
ONNX Runtime session, a quantized graph: :mod:`compresskit.runtimes` builds them) back between torchvision's own
transform and post-processing, so every variant is evaluated end to end by the same evaluator. Works for
torchvision's FCOS, RetinaNet and SSD classes. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.ssd import SSD

_HEAD_OUTPUTS = {FCOS: ("cls_logits", "bbox_regression", "bbox_ctrness"),
                 RetinaNet: ("cls_logits", "bbox_regression"), SSD: ("bbox_regression", "cls_logits")}


def head_output_names(detector: nn.Module) -> tuple[str, ...]:
    for cls, names in _HEAD_OUTPUTS.items():
        if isinstance(detector, cls):
            return names
    raise TypeError(f"{type(detector).__name__} is not a single-stage torchvision detector (FCOS, RetinaNet, SSD); "
                    "two-stage detectors such as Faster R-CNN keep proposals in eager code and have no single core")


class ExportableCore(nn.Module):
    """``backbone`` + ``head`` of a single-stage detector: normalised, padded batch ``(N, 3, H, W)`` -> tuple of
    head tensors (names in ``output_names``). Shares its modules with the detector (no copy)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.output_names = head_output_names(detector)
        self.backbone = detector.backbone
        self.head = detector.head
        self.training = detector.training  # the flag only: mode changes must not reach the shared modules

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(batch)
        features = list(features.values()) if isinstance(features, dict) else [features]
        outputs = self.head(features)
        return tuple(outputs[name] for name in self.output_names)


class EndToEndDetector(nn.Module):
    """A detector evaluated through a replaceable core: ``transform -> core -> anchors + post-processing``.

    Args:
        detector: the float torchvision detector; its transform, anchor generator and post-processing are reused,
            and its backbone tells the feature-map sizes (probed once per input size).
        core: any callable ``batch -> tuple of tensors`` (default: the detector's own :class:`ExportableCore`).
    """

    def __init__(self, detector: nn.Module, core: Callable | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.output_names = head_output_names(detector)
        self.core = core if core is not None else ExportableCore(detector)
        self._feature_shapes: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def feature_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        if (height, width) not in self._feature_shapes:
            with torch.inference_mode():
                features = self.detector.backbone(torch.zeros(1, 3, height, width))
            features = features.values() if isinstance(features, dict) else [features]
            self._feature_shapes[(height, width)] = [tuple(f.shape[-2:]) for f in features]
        return self._feature_shapes[(height, width)]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        detector = self.detector
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = detector.transform(images)
        head_outputs = dict(zip(self.output_names, self.core(image_list.tensors)))
        # The anchor generators only read each feature map's size, so empty tensors of the right shape suffice.
        shapes = self.feature_shapes(*image_list.tensors.shape[-2:])
        empty_maps = [torch.empty(1, 0, h, w, dtype=image_list.tensors.dtype) for h, w in shapes]
        anchors = detector.anchor_generator(image_list, empty_maps)
        if isinstance(detector, SSD):
            detections = detector.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
        else:
            locations = [h * w for h, w in shapes]
            per_location = head_outputs["cls_logits"].size(1) // sum(locations)
            sizes = [n * per_location for n in locations]
            split_outputs = {k: list(v.split(sizes, dim=1)) for k, v in head_outputs.items()}
            split_anchors = [list(a.split(sizes)) for a in anchors]
            detections = detector.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)
        return detector.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def core_input_size(detector: nn.Module, image: torch.Tensor) -> tuple[int, int]:
    """The (height, width) the detector's core receives for ``image``: after its own transform resized it (to
    ``min_size`` on the short side for RetinaNet/FCOS, to a fixed size for SSD) and padded it to the size
    divisor. MACs, exports and every other size-dependent figure are taken at this size, not the image's.
    The transform is deterministic in eval mode; the detector's own mode is restored."""
    transform = detector.transform
    was_training = transform.training
    transform.eval()
    try:
        with torch.inference_mode():
            image_list, _ = transform([image])
    finally:
        transform.train(was_training)
    height, width = image_list.tensors.shape[-2:]
    return int(height), int(width)


def example_batch(image_size: int | Sequence[int] = 320, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A fixed random input for the core (export, latency): the same tensor on both sides of a comparison."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# What torch 2.9+ says when its TorchScript-based exporter is chosen (the start of each message).
_LEGACY_EXPORTER_WARNINGS = ("You are using the legacy TorchScript-based ONNX export",
                             "The feature will be removed. Please remove usage of this function")


def export_core_onnx(core: nn.Module, path: Path | str, example: torch.Tensor | None = None,
                     opset: int = 18) -> Path:
    """Export ``core`` to ONNX, traced on ``example`` (batch 1, 320x320 by default); returns the path.

    Uses torch's TorchScript-based exporter on purpose. Measured on the shipped teacher core (torch 2.14): it
    exports in under a second where the ``torch.export``-based exporter (``dynamo=True``) takes about 14 s, both
    give the same operators (82 Conv, InstanceNormalization for GroupNorm) and outputs within 1e-5, and it needs no
    ``onnxscript``. Lessons export several cores per run, so the fast path wins; the two DeprecationWarnings that
    exporter raises about itself are silenced here, and only here, for that reason (any other deprecation still
    reaches the caller, and fails the tests).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example if example is not None else example_batch()
    tmp = path.with_name(path.name + ".part")
    core.eval()
    output_names = list(getattr(core, "output_names", [])) or None
    # Batch and image size stay free, so one file serves batched evaluation and any padded input size.
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic_axes.update({name: {0: "batch", 1: "locations"} for name in output_names or []})
    with warnings.catch_warnings():
        for message in _LEGACY_EXPORTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks traced as constants
        torch.onnx.export(core, (example,), str(tmp), input_names=["images"], output_names=output_names,
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False)
    tmp.replace(path)
    return path


def export_core_program(core: nn.Module, example: torch.Tensor | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of the core at a fixed input shape (the entry point of PT2E quantization)."""
    example = example if example is not None else example_batch()
    return torch.export.export(core.eval(), (example,))
