"""Presets, checkpoints, the core split and its exports, and the shipped detectors' recorded mAP."""

from __future__ import annotations

import pytest
import torch

from compresskit.engine import VAL_SUBSET_IMAGES, val_subset
from compresskit.data import load_split
from compresskit.engine import evaluate, make_loader
from compresskit.errors import CheckpointError
from compresskit.measure import count_macs
from compresskit.models import (EMBEDDED_PRESETS, build_coco_architecture, build_detector, load_checkpoint,
                                load_preset, save_checkpoint, shipped_checkpoint)
from compresskit.models.core import (CoreDetector, DetectorCore, OnnxCore, example_batch, export_core_onnx,
                                     export_core_program)
from compresskit.data.dataset import LabelMap
from compresskit.data.embedded import CATEGORIES


def test_student_has_at_most_a_quarter_of_the_teachers_macs():
    macs = {name: count_macs(DetectorCore(build_detector(spec).eval()), example_batch())
            for name, spec in EMBEDDED_PRESETS.items()}
    assert macs["student"] <= macs["teacher"] / 4, macs


def test_core_detector_reproduces_the_detector_and_exports(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    detector.score_thresh = 0.0  # keep many boxes, so the comparison is not trivially empty
    images = [torch.rand(3, 320, 320)]
    with torch.inference_mode():
        direct, split = detector(images)[0], CoreDetector(detector)(images)[0]
    assert len(direct["boxes"]) > 0
    torch.testing.assert_close(direct["boxes"], split["boxes"])
    torch.testing.assert_close(direct["scores"], split["scores"])
    core = DetectorCore(detector)
    onnx_path = export_core_onnx(core, tmp_path / "core.onnx")
    with torch.inference_mode():
        reference = core(example_batch())
        onnx_outputs = OnnxCore(onnx_path)(example_batch())
        via_onnx = CoreDetector(detector, OnnxCore(onnx_path))(images)[0]
    for expected, actual in zip(reference, onnx_outputs):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)
    assert torch.equal(via_onnx["labels"][:20], direct["labels"][:20])
    program = export_core_program(core)
    torch.testing.assert_close(program.module()(example_batch())[0], reference[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_coco_architectures_split_into_a_core(name):
    detector = build_coco_architecture(name)
    images = [torch.rand(3, 240, 320)]
    with torch.inference_mode():
        direct, split = detector(images)[0], CoreDetector(detector)(images)[0]
    torch.testing.assert_close(direct["scores"], split["scores"])


def test_checkpoint_round_trip_is_safe_and_exact(tmp_path):
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    label_map = LabelMap.contiguous(CATEGORIES)
    path = save_checkpoint(tmp_path / "s.pt", detector, EMBEDDED_PRESETS["student"], label_map, meta={"x": 1})
    loaded, loaded_map, meta = load_checkpoint(path)
    assert loaded_map == label_map and meta == {"x": 1}
    batch = example_batch()
    with torch.inference_mode():
        for a, b in zip(DetectorCore(detector)(batch), DetectorCore(loaded)(batch)):
            assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a compresskit checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def _shipped(name: str):
    if not shipped_checkpoint(name).exists():
        pytest.skip(f"no shipped {name} checkpoint in this checkout")
    return load_preset(name)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_shipped_checkpoint_reproduces_its_recorded_map(name):
    model, label_map, meta = _shipped(name)
    recorded = meta["val_subset"]
    assert recorded["images"] == VAL_SUBSET_IMAGES
    subset = val_subset(load_split("val", label_map=label_map))
    metrics = evaluate(model, make_loader(subset, batch_size=8, train=False), label_map, progress=False)
    assert metrics["map"] == pytest.approx(recorded["metrics"]["map"], abs=0.005)


def test_shipped_teacher_meets_its_target_and_leads_the_student():
    teacher_meta, student_meta = _shipped("teacher")[2], _shipped("student")[2]
    assert teacher_meta["val_metrics"]["map"] >= 0.60, teacher_meta["val_metrics"]
    assert teacher_meta["val_metrics"]["map"] - student_meta["val_metrics"]["map"] >= 0.05
