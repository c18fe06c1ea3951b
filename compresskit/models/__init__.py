"""Detector presets, checkpoints and the exportable core (see ``presets`` and ``core``)."""

from compresskit.models.presets import (COCO_PRESETS, EMBEDDED_PRESETS, DetectorSpec, build_coco_architecture,
                                        build_detector, load_checkpoint, load_coco_pretrained, load_detector,
                                        load_preset, save_checkpoint, shipped_checkpoint)

__all__ = ["COCO_PRESETS", "EMBEDDED_PRESETS", "DetectorSpec", "build_coco_architecture", "build_detector",
           "load_checkpoint", "load_coco_pretrained", "load_detector", "load_preset", "save_checkpoint",
           "shipped_checkpoint"]
