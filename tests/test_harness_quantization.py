"""The quantization study end to end on tiny data: every int8 record is paired with an fp32 core of the same
runtime measured in the same run, ships a smaller file, and keeps the detector's accuracy close."""

from __future__ import annotations

import pytest

from compresskit.harness import quantization, training_record

pytestmark = pytest.mark.slow


def test_quantization_study_pairs_int8_with_fp32_of_the_same_runtime(tiny_profile):
    study = quantization.quantization_study(val_images=4, runs=3, calibration_images=4, sweep=False)
    records = study.records_by_id
    assert {r["profile"] for r in study.records} == {"embedded"}
    for name in ("teacher", "teacher_bnhead", "teacher_pruned", "student"):
        int8, fp32 = records[f"quantization/{name}/ort-int8"], records[f"quantization/{name}/ort-fp32"]
        # The deployment head is compared with the model it replaces: the GroupNorm teacher's fp32 core.
        paired_with = "quantization/teacher/ort-fp32" if name == "teacher_bnhead" else fp32["id"]
        assert int8["baseline"] == paired_with and int8["runtime"] == fp32["runtime"] == "onnxruntime"
        assert int8["paired_latency"]["baseline"] == paired_with
        assert fp32["size_bytes"] / int8["size_bytes"] > 3.0, name
        assert int8["config"]["calibration_images"] == 4
        # The same detector in OpenVINO: its fp32 IR against ONNX Runtime's fp32 core (the common yardstick), NNCF's
        # int8 against that fp32 IR, calibrated on the same number of train images.
        ov_fp32, ov_int8 = records[f"quantization/{name}/ov-fp32"], records[f"quantization/{name}/ov-int8"]
        assert ov_fp32["runtime"] == ov_int8["runtime"] == "openvino"
        assert ov_fp32["baseline"] == paired_with and ov_int8["baseline"] == ov_fp32["id"]
        assert ov_int8["config"]["calibration_images"] == 4 and ov_fp32["size_bytes"] / ov_int8["size_bytes"] > 2.0
        assert ov_fp32["map"] == pytest.approx(fp32["map"], abs=0.002)  # f32 in both runtimes: the same detections
    article = records["quantization/teacher/dynamic-article"]
    assert article["config"]["changed"] == [] and article["size_bytes"] == records["quantization/teacher/eager"][
        "size_bytes"]
    fp16 = records["quantization/teacher/fp16-storage"]
    assert 1.9 < records["quantization/teacher/eager"]["size_bytes"] / fp16["size_bytes"] < 2.1
    pt2e, compiled = records["quantization/teacher/pt2e-int8"], records["quantization/teacher/compile-fp32"]
    assert pt2e["runtime"] == compiled["runtime"] == "torch-compile" and pt2e["baseline"] == compiled["id"]
    assert pt2e["config"]["float_convs"] == 0 and compiled["size_bytes"] / pt2e["size_bytes"] > 3.0
    qat = records["quantization/teacher/pt2e-qat-int8"]  # from the package's QAT training record
    recorded = training_record("teacher_qat")
    assert (qat["technique"], qat["baseline"]) == ("qat", compiled["id"])
    assert qat["map"] == recorded["val_metrics"]["map"] and qat["config"]["map_source"].startswith("training")
    assert qat["size_bytes"] == pt2e["size_bytes"] and qat["train_seconds"] == recorded["train_seconds"]
    signed = records["quantization/teacher/int8-activations/ort-int8"]
    assert signed["config"]["activations"] == "int8"


def test_sensitivity_study_ranks_parts_and_keeps_the_worst_float(tiny_profile):
    study = quantization.sensitivity_study(val_images=4, runs=2, calibration_images=4, parts=("stem", "head"))
    ids = [r["id"] for r in study.records]
    assert ids[0] == "quantization/sensitivity/ort-fp32"
    assert {"quantization/sensitivity/only-stem", "quantization/sensitivity/only-head",
            "quantization/sensitivity/all-but-worst", "quantization/sensitivity/all-int8"} <= set(ids)
    worst = study.records_by_id["quantization/sensitivity/all-but-worst"]["config"]["float_parts"]
    assert worst[0] in ("stem", "head")
