"""Detector presets and trunks, the checkpoint writers and loader, and the exportable core (see ``presets``,
``trunks``, ``checkpoints`` and ``core``)."""

from compresskit.models.checkpoints import (architecture_of, carry_class_slots_, checkpoint_design, checkpoint_spec,
                                            coco_slots, load_checkpoint, load_detector, load_preset, save_checkpoint,
                                            save_torchvision_checkpoint, shipped_checkpoint, transfer_weights_)
from compresskit.models.presets import (COCO_PRESETS, EMBEDDED_PRESETS, DetectorSpec, build_coco_architecture,
                                        build_detector, coco_weights_verified, freeze_resnet_trunk_,
                                        load_coco_pretrained)
from compresskit.models.trunks import RESNET_BASIC, feature_nodes

__all__ = ["COCO_PRESETS", "EMBEDDED_PRESETS", "RESNET_BASIC", "DetectorSpec", "architecture_of",
           "build_coco_architecture", "build_detector", "carry_class_slots_", "checkpoint_design", "checkpoint_spec",
           "coco_slots", "coco_weights_verified",
           "freeze_resnet_trunk_", "feature_nodes", "load_checkpoint",
           "load_coco_pretrained", "load_detector", "load_preset", "save_checkpoint", "save_torchvision_checkpoint",
           "shipped_checkpoint", "transfer_weights_"]
