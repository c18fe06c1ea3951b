"""The harness: a variant becomes a record with its own artifact size and a paired speed-up; studies load through
the profile-aware loaders, so a record's profile is what was actually loaded (both profiles, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import get_model_weights

from compresskit import harness
from compresskit.data import coco_subset
from compresskit.engine import make_loader
from compresskit.data import load_split
from compresskit.models import COCO_PRESETS, EMBEDDED_PRESETS, build_coco_architecture, build_detector
from compresskit.report import compare, write_records, read_results


@pytest.fixture(scope="module")
def small_study(tiny_embedded):
    torch.manual_seed(0)
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    val = load_split("val", tiny_embedded)
    study = harness.Study(lesson="test", model="student", profile="embedded",
                          val_loader=make_loader(val, batch_size=4, train=False), label_map=val.label_map, runs=5)
    return study, detector


def test_first_record_is_the_baseline_and_later_ones_are_paired_with_it(small_study):
    study, detector = small_study
    base = study.measure(detector, "test/base", technique="baseline")
    assert base["baseline"] is None and base["paired_latency"] is None
    again = study.measure(detector, "test/again", technique="baseline")
    paired = again["paired_latency"]
    assert again["baseline"] == "test/base" and paired["baseline"] == "test/base" and paired["pairs"] == 5
    low, high = paired["interval"]
    assert low <= paired["speedup"] <= high
    assert compare(again, base)["latency_speedup"] == paired["speedup"]
    assert again["map"] == base["map"] and again["macs"] == base["macs"] and again["profile"] == "embedded"


def test_a_baseline_that_ran_at_another_speed_in_the_pairs_marks_the_comparison_noisy(small_study, monkeypatch):
    # The load changed between the baseline's own timing and the pairs: a tight interval is then no guarantee.
    from compresskit.harness import variant
    from compresskit.measure import Latency, PairedLatency

    study, detector = small_study
    base = study.measure(detector, "drift/base", technique="baseline")
    alone = base["latency_ms"]["median"]

    def pairs_at(factor: float):
        def fake(baseline_fn, candidate_fn, inputs, **settings) -> PairedLatency:
            timing = Latency(median_ms=alone * factor, p90_ms=alone * factor, runs=5, threads=2, batch=1)
            return PairedLatency(speedup=2.0, low=1.98, high=2.02, pairs=5, threads=2, baseline=timing,
                                 candidate=Latency(median_ms=alone * factor / 2, p90_ms=alone * factor / 2, runs=5,
                                                   threads=2, batch=1))
        return fake

    monkeypatch.setattr(variant, "compare_latency", pairs_at(1.6))
    drifted = study.measure(detector, "drift/slow", technique="baseline", baseline="drift/base", evaluate_map=False)
    assert drifted["paired_latency"]["noisy"] is True and drifted["paired_latency"]["baseline_drift"] == 1.6
    monkeypatch.setattr(variant, "compare_latency", pairs_at(1.1))
    steady = study.measure(detector, "drift/steady", technique="baseline", baseline="drift/base", evaluate_map=False)
    assert steady["paired_latency"]["noisy"] is False and steady["paired_latency"]["baseline_drift"] == 1.1


def test_baseline_must_belong_to_the_same_study(small_study):
    study, detector = small_study
    with pytest.raises(ValueError, match="not a record of this study"):
        study.measure(detector, "test/orphan", technique="baseline", baseline="somewhere/else")


def test_onnx_record_ships_the_onnx_file_and_an_artifact_is_measured_by_its_own_size(small_study, tmp_path):
    study, detector = small_study
    eager = study.measure(detector, "test/eager", technique="baseline", baseline=None)
    ort = study.measure(detector, "test/ort", technique="baseline", runtime="onnxruntime", baseline=eager["id"])
    onnx_files = list((harness.variant.artifact_dir()).glob("test_ort.onnx"))
    assert ort["size_bytes"] == onnx_files[0].stat().st_size != eager["size_bytes"]
    assert abs(ort["map"] - eager["map"]) < 0.01
    shipped = tmp_path / "int8.bin"
    shipped.write_bytes(b"\x01" * 12345)
    custom = study.measure(detector, "test/artifact", technique="static_ptq", artifact=shipped)
    assert custom["size_bytes"] == 12345 and custom["params"] == eager["params"]


def test_records_write_with_their_pairs(small_study, tmp_path):
    study, _ = small_study
    path = write_records(study.records, reports_dir=tmp_path)
    written = {record["id"]: record for record in read_results(path)["records"]}
    assert written["test/again"]["paired_latency"]["baseline"] == "test/base"


def test_embedded_profile_study_is_stamped_embedded(tiny_profile):
    study = harness.baseline_study(models=("student",), val_images=4, runs=3)
    assert [r["id"] for r in study.records] == ["baseline/student/eager", "baseline/student/ort-fp32"]
    assert {r["profile"] for r in study.records} == {"embedded"}
    assert study.records[1]["paired_latency"]["baseline"] == "baseline/student/eager"


def test_one_loader_names_every_preset_and_shipped_variant():
    from compresskit.errors import ConfigError
    from compresskit.measure import count_params

    pruned = harness.load_for_study("teacher_pruned", "embedded")
    teacher = harness.load_for_study("teacher", "embedded")
    assert pruned.name == "teacher_pruned" and pruned.label_map == teacher.label_map
    assert count_params(pruned.model) < count_params(teacher.model)
    with pytest.raises(ConfigError, match="embedded profile only"):
        harness.load_for_study("teacher_bnhead", "coco")
    with pytest.raises(ConfigError, match="unknown detector 'nope'.*teacher_bnhead.*teacher_pruned"):
        harness.load_for_study("nope", "embedded")


@pytest.mark.slow
def test_coco_profile_study_loads_coco_data_and_weights_and_says_so(coco_tiny, tmp_path, monkeypatch):
    """COMPRESSKIT_PROFILE=coco, offline: the subset is built from a local COCO source, the weights come from a
    locally saved state dict in the weights cache, and every record says ``coco``."""
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "coco")
    monkeypatch.setenv("COMPRESSKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COMPRESSKIT_COCO_ROOT", str(coco_tiny))
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path / "weights"))
    small = coco_subset.SubsetRecipe(split="train2017", images=2, seed=0)
    monkeypatch.setattr(coco_subset, "DEFAULT_RECIPES", {"train2017": small, "val2017": small})
    weights = get_model_weights(COCO_PRESETS["student"]).DEFAULT
    cached = tmp_path / "weights" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_coco_architecture("student", num_classes=91).state_dict(), cached)

    loaded = harness.load_for_study("student")
    assert loaded.profile == "coco" and type(loaded.model).__name__ == "SSD"
    study = harness.baseline_study(models=("student",), runs=3)
    assert {r["profile"] for r in study.records} == {"coco"}
    assert study.records[0]["config"]["source"] == "torchvision COCO weights"
    assert len(study.val_loader.dataset) == 2


def _counting_evaluate(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = harness.variant.evaluate

    def counted(runner, loader, label_map, **kwargs):
        calls.append(kwargs.get("desc", ""))
        return real(runner, loader, label_map, **kwargs)

    monkeypatch.setattr(harness.variant, "evaluate", counted)
    return calls


def test_reproduce_evaluates_an_identical_variant_once_and_anything_changed_again(small_study, monkeypatch):
    study, detector = small_study
    calls = _counting_evaluate(monkeypatch)
    cache = harness.ReuseCache()
    monkeypatch.setattr(study, "reuse", cache)
    first = study.measure(detector, "reuse/eager", technique="baseline")
    same = study.measure(detector, "reuse/eager-again", technique="baseline")
    assert len(calls) == 1 and same["map"] == first["map"]
    # the ONNX export of the same weights is byte-identical, so its ORT evaluation is also done once
    study.measure(detector, "reuse/ort", runtime="onnxruntime", technique="baseline")
    study.measure(detector, "reuse/ort-again", runtime="onnxruntime", technique="baseline")
    assert len(calls) == 2
    changed = build_detector(EMBEDDED_PRESETS["student"]).eval()
    changed.load_state_dict(detector.state_dict())
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1.0  # one weight differs
    study.measure(changed, "reuse/one-weight-changed", technique="baseline")
    assert len(calls) == 3
    changed.load_state_dict(detector.state_dict())
    changed.score_thresh = detector.score_thresh + 0.1  # a post-processing setting differs
    study.measure(changed, "reuse/threshold-changed", technique="baseline")
    assert len(calls) == 4
    # another study of the same run (reproduce hands each study the run's cache) reuses the evaluation too
    other = harness.Study(lesson="other", model="student", profile="embedded", val_loader=study.val_loader,
                          label_map=study.label_map, runs=2, reuse=cache)
    assert other.measure(detector, "reuse/other-study", technique="baseline")["map"] == first["map"]
    assert len(calls) == 4
    study.reuse = None  # a study without a cache evaluates everything itself
    study.measure(detector, "reuse/outside", technique="baseline")
    assert len(calls) == 5


def test_reproduce_quantizes_an_identical_call_once_and_copies_its_files(small_study, tiny_embedded, monkeypatch):
    from compresskit.harness import quantization
    from compresskit.quantize.ort import OrtQuantConfig

    study, detector = small_study
    calibration_set = load_split("train", tiny_embedded, train_transforms=False)
    calls = []
    real = quantization.quantize_core_onnx
    monkeypatch.setattr(quantization, "quantize_core_onnx", lambda *args, **kwargs: calls.append(1) or real(
        *args, **kwargs))
    config = OrtQuantConfig(calibration_images=2)
    monkeypatch.setattr(study, "reuse", harness.ReuseCache())
    first = quantization.quantize_for_study(study, detector, calibration_set, "reuse-a", config)
    again = quantization.quantize_for_study(study, detector, calibration_set, "reuse-b", config)
    assert len(calls) == 1 and again.int8_path != first.int8_path
    assert again.int8_path.read_bytes() == first.int8_path.read_bytes()
    assert again.fp32_path.read_bytes() == first.fp32_path.read_bytes()
    assert again.calibration_images == 2 and again.config == config
    quantization.quantize_for_study(study, detector, calibration_set, "reuse-c",
                                    OrtQuantConfig(calibration_images=3))  # other settings: quantized again
    assert len(calls) == 2
    augmented = load_split("train", tiny_embedded, train_transforms=True)  # random items: never reused
    quantization.quantize_for_study(study, detector, augmented, "reuse-d", config)
    assert len(calls) == 3
    study.reuse = None  # without the run's cache: quantized again
    quantization.quantize_for_study(study, detector, calibration_set, "reuse-e", config)
    assert len(calls) == 4


def test_a_study_without_coco_detectors_runs_on_the_embedded_profile_and_says_why():
    from compresskit.harness import COCO_GAPS, study_profile

    notes: list[str] = []
    assert study_profile("distillation", "embedded", log=notes.append) == "embedded" and notes == []
    assert study_profile("quantization", "coco", log=notes.append) == "coco" and notes == []
    for study in ("distillation", "backbones", "combined"):
        assert study_profile(study, "coco", log=notes.append) == "embedded"
    assert len(notes) == 3 and all("runs on the embedded profile" in note and "On COCO today" in note
                                   for note in notes)
    assert set(COCO_GAPS) >= {"distillation", "backbones", "combined", "search"}
