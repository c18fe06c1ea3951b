"""Every settings dataclass refuses a bad value when it is built, with a message naming the field and the fix.

One case per refusal: (config class, the bad keyword arguments, fragments the message must contain). The
behaviour each valid setting has on a model is tested beside the technique that uses it.
"""

from __future__ import annotations

import pytest

from compresskit.data.coco_subset import SubsetRecipe
from compresskit.data.split import SplitConfig
from compresskit.distill.fcos import KDConfig
from compresskit.errors import ConfigError, DatasetError
from compresskit.harness.own_data import DatasetStudyConfig
from compresskit.models.presets import DetectorSpec
from compresskit.prune.structured import StructuredConfig
from compresskit.prune.unstructured import UnstructuredConfig
from compresskit.quantize.ort import OrtQuantConfig
from compresskit.quantize.pt2e import Pt2eConfig
from compresskit.quantize.qat import QatConfig

# A recipe is a description of data, so its refusals are dataset errors; every other config raises ConfigError.
ERROR_OF = {SubsetRecipe: DatasetError}

CASES = [
    (StructuredConfig, {"ratio": 1.0}, ("StructuredConfig.ratio = 1.0", "[0, 1)")),
    (StructuredConfig, {"ratio": -0.5}, ("StructuredConfig.ratio = -0.5", "[0, 1)")),
    (StructuredConfig, {"ratio": "half"}, ("StructuredConfig.ratio = 'half'",)),
    (StructuredConfig, {"part_ratios": {"layer4": 1.2}}, ("part_ratios['layer4'] = 1.2", "[0, 1)")),
    (StructuredConfig, {"round_to": -8}, ("round_to = -8", ">= 0")),
    (StructuredConfig, {"importance": "l3"}, ("importance = 'l3'", "l1", "fpgm")),
    (StructuredConfig, {"image_size": 0}, ("image_size = 0", "positive")),
    (UnstructuredConfig, {"amount": 1.5}, ("UnstructuredConfig.amount = 1.5", "[0, 1]")),
    (UnstructuredConfig, {"amount": -0.1}, ("UnstructuredConfig.amount = -0.1",)),
    (UnstructuredConfig, {"scope": "model"}, ("UnstructuredConfig.scope = 'model'", "global", "layer")),
    (OrtQuantConfig, {"calibration_images": 0}, ("calibration_images must be an integer >= 1, got 0",)),
    (OrtQuantConfig, {"calibration_images": True}, ("calibration_images must be an integer >= 1, got True",)),
    (OrtQuantConfig, {"method": "mse"}, ("unknown method 'mse'", "minmax")),
    (OrtQuantConfig, {"activations": "fp8"}, ("unknown activations 'fp8'", "uint8")),
    (OrtQuantConfig, {"per_channel": "yes"}, ("per_channel must be True or False, got 'yes'",)),
    (OrtQuantConfig, {"reduce_range": "auto"}, ("reduce_range must be True, False or None", "'auto'")),
    (OrtQuantConfig, {"exclude": "head"}, ("exclude must be a tuple of names, e.g. ('head',)",)),
    (OrtQuantConfig, {"exclude": ("",)}, ("exclude entries must be non-empty strings",)),
    (OrtQuantConfig, {"seed": 1.5}, ("seed must be an integer, got 1.5",)),
    (Pt2eConfig, {"calibration_images": 0}, ("calibration_images must be a positive integer, got 0",)),
    (Pt2eConfig, {"calibration_images": -3}, ("calibration_images must be a positive integer, got -3",)),
    (Pt2eConfig, {"calibration_images": True}, ("calibration_images must be a positive integer, got True",)),
    (Pt2eConfig, {"calibration_images": 2.0}, ("calibration_images must be a positive integer, got 2.0",)),
    (Pt2eConfig, {"reduce_range": "auto"}, ("reduce_range must be True, False or None", "'auto'")),
    (Pt2eConfig, {"per_channel": 1}, ("per_channel must be True or False, got 1",)),
    (Pt2eConfig, {"seed": None}, ("seed must be an integer, got None",)),
    (Pt2eConfig, {"per_channel": False}, ("per_channel=False has no int8 kernels after torch.compile",
                                          "compile=False")),
    (QatConfig, {"batch_size": 0}, ("batch_size must be a positive integer, got 0",)),
    (QatConfig, {"epochs": True}, ("epochs must be a positive integer, got True",)),
    (QatConfig, {"lr": float("nan")}, ("lr must be a positive number, got nan",)),
    (QatConfig, {"max_iters_per_epoch": 0}, ("max_iters_per_epoch must be None or at least 1, got 0",)),
    (KDConfig, {"method": "logits"},
     ("method must be one of ['none', 'logit', 'feature', 'both', 'boxes'], got 'logits'",)),
    (KDConfig, {"box_score": 0.0}, ("box_score must be a number in (0, 1], got 0.0",)),
    (KDConfig, {"foreground": "boxes"}, ("foreground must be one of ['teacher', 'uniform'], got 'boxes'",)),
    (KDConfig, {"temperature": 0}, ("temperature must be a positive number, got 0",)),
    (KDConfig, {"box_weight": -1.0}, ("box_weight must be a number >= 0, got -1.0",)),
    (DatasetStudyConfig, {"prune_ratio": 1.0}, ("prune_ratio must be in (0, 1), got 1.0",)),
    (DatasetStudyConfig, {"prune_ratio": 0.0}, ("prune_ratio must be in (0, 1), got 0.0",)),
    (DatasetStudyConfig, {"finetune_steps": -1}, ("finetune_steps must be an integer >= 0, got -1",)),
    (DatasetStudyConfig, {"runs": 0}, ("runs must be an integer >= 1, got 0",)),
    (DatasetStudyConfig, {"calibration_images": 2.5}, ("calibration_images must be an integer >= 1, got 2.5",)),
    (SplitConfig, {"val_fraction": 1.0}, ("val_fraction must be between 0 and 1 (exclusive), got 1.0",)),
    (SplitConfig, {"images": "symlink"}, ("images must be one of", "got 'symlink'")),
    (SplitConfig, {"group_by": "(unclosed"}, ("group_by '(unclosed' is not a regular expression",)),
    (DetectorSpec, {"head_norm": "layer"}, ("head_norm must be one of ['batch', 'group'], got 'layer'",)),
    (DetectorSpec, {"head_norm": "Batch"}, ("head_norm must be one of ['batch', 'group'], got 'Batch'",)),
    (DetectorSpec, {"head_norm": None}, ("head_norm must be one of ['batch', 'group'], got None",)),
    (SubsetRecipe, {"split": "test2017", "images": 5}, ("split 'test2017' is not one of train2017, val2017",)),
    (SubsetRecipe, {"split": "val2017", "images": 0}, ("asks for 0 images; ask for at least 1",)),
    (SubsetRecipe, {"split": "val2017", "images": 3, "categories": []}, ("empty category list",)),
    (SubsetRecipe, {"split": "val2017", "images": 3, "annotations_sha256": "abc123"},
     ("annotations_sha256 'abc123' is not a sha256 digest",)),
]


@pytest.mark.parametrize("config_class, bad, fragments", CASES,
                         ids=[f"{cls.__name__}-" + ",".join(f"{key}={value!r}" for key, value in bad.items())
                              for cls, bad, _ in CASES])
def test_config_rejects_a_bad_value_naming_it(config_class, bad, fragments):
    with pytest.raises(ERROR_OF.get(config_class, ConfigError)) as raised:
        config_class(**bad)
    message = str(raised.value)
    assert all(fragment in message for fragment in fragments), message
