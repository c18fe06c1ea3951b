"""The ``openvino`` runtime and NNCF's int8 for it: an fp32 core that computes what torch computes, measured by a
``Study`` like every runtime (the IR's two files are its size), NNCF post-training quantization with the kit's
part names kept in float, and accuracy control driven by the kit's evaluator. On the shipped student and the
session's tiny dataset, with few calibration images, so each test takes seconds."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest
import torch

from compresskit import harness
from compresskit.data import load_split
from compresskit.engine import evaluate, make_loader, val_subset
from compresskit.errors import ConfigError
from compresskit.models.core import EndToEndDetector, ExportableCore, example_batch
from compresskit.quantize.openvino import (OpenVinoQuantConfig, ignored_op_names, quantize_core_openvino,
                                           quantize_core_openvino_with_accuracy_control, reverted_parts)
from compresskit.runtimes import OpenVinoCore, get_runtime
from compresskit.runtimes.openvino import _SignalStack, openvino_core, signal_stack_kept


@pytest.fixture(scope="module")
def splits(student, tiny_embedded):
    _, label_map = student
    return (load_split("train", tiny_embedded, train_transforms=False, label_map=label_map),
            load_split("val", tiny_embedded, label_map=label_map))


@pytest.fixture(scope="module")
def quantized(student, splits, tmp_path_factory):
    detector, _ = student
    config = OpenVinoQuantConfig(calibration_images=4, exclude=("head",))
    return quantize_core_openvino(detector, splits[0], config, tmp_path_factory.mktemp("ov") / "student-int8.xml")


def test_the_fp32_core_computes_what_torch_computes_in_f32(student, tmp_path):
    detector, _ = student
    core = get_runtime("openvino").core_for(detector, threads=2, artifact_dir=tmp_path, record_id="s/ov-fp32")
    batch = example_batch((320, 352))  # another shape than the export's: the IR keeps free axes
    with torch.no_grad():
        expected = ExportableCore(detector)(batch)
    for got, want in zip(core(batch), expected):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)  # f32, not OpenVINO's bf16 default
    assert core.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert [path.suffix for path in core.files] == [".xml", ".bin"] and all(path.is_file() for path in core.files)


def test_a_study_measures_the_openvino_runtime_like_the_others(student, splits, tmp_path):
    detector, label_map = student
    study = harness.Study(lesson="test", model="student", profile="embedded", runs=3, label_map=label_map,
                          val_loader=make_loader(splits[1], batch_size=4, train=False), artifacts=tmp_path)
    eager = study.measure(detector, "ov/student/eager", technique="baseline")
    record = study.measure(detector, "ov/student/ov-fp32", technique="baseline", runtime="openvino")
    assert record["runtime"] == "openvino" and record["paired_latency"]["baseline"] == eager["id"]
    assert record["map"] == pytest.approx(eager["map"], abs=1e-3)  # the same detections, in f32
    xml = tmp_path / "ov_student_ov-fp32.xml"
    assert record["size_bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def test_ptq_keeps_the_named_parts_in_float_and_shrinks_the_weights(student, splits, quantized):
    detector, label_map = student
    assert quantized.calibration_images == 4 and quantized.excluded_ops  # the head's convolutions
    details = quantized.as_dict()
    assert details["excluded_ops"] == len(quantized.excluded_ops) and details["size_ratio"] == pytest.approx(
        quantized.size_ratio, abs=1e-4)
    # With the head in float, the rest's int8 weights still make the IR much smaller.
    assert quantized.size_ratio > 1.8
    model = openvino_core().read_model(str(quantized.int8_path))
    fake_quantized = {op.get_friendly_name() for op in model.get_ordered_ops()
                      if any(value.get_node().get_type_name() == "FakeQuantize" for value in op.input_values())}
    assert not fake_quantized & set(quantized.excluded_ops)  # kept in float: no int8 input
    assert any(name.startswith("/backbone/") for name in fake_quantized)  # the trunk is int8
    loader = make_loader(splits[1], batch_size=4, train=False)
    fp32_map = evaluate(EndToEndDetector(detector, OpenVinoCore(quantized.fp32_path)), loader, label_map,
                        progress=False)["map"]
    int8_map = evaluate(EndToEndDetector(detector, OpenVinoCore(quantized.int8_path)), loader, label_map,
                        progress=False)["map"]
    assert abs(fp32_map - int8_map) < 0.05  # 8 images: a coarse check that int8 still detects


def test_nncf_prints_nothing_and_bad_settings_are_one_message(student, splits, tmp_path, capsys):
    capsys.readouterr()
    detector, _ = student
    quantize_core_openvino(detector, splits[0], OpenVinoQuantConfig(calibration_images=2), tmp_path / "q.xml")
    captured = capsys.readouterr()
    assert captured.out == "" and "Statistics collection" not in captured.err
    with pytest.raises(ConfigError, match="matches no operation"):
        quantize_core_openvino(detector, splits[0], OpenVinoQuantConfig(calibration_images=2, exclude=("/nowhere/",)),
                               tmp_path / "bad.xml")
    for bad in ({"preset": "fast"}, {"calibration_images": 0}, {"exclude": "head"}, {"fast_bias_correction": 1}):
        with pytest.raises(ConfigError):
            OpenVinoQuantConfig(**bad)


def test_ignored_scope_names_come_from_the_kit_part_names(quantized):
    model = openvino_core().read_model(str(quantized.fp32_path))
    head = ignored_op_names(model, ("head",))
    assert head and all(name.startswith("/head/") for name in head)
    assert set(ignored_op_names(model, ("layer1",))) == set(ignored_op_names(model, ("/backbone/body/layer1/",)))
    assert reverted_parts(head[:2] + ["/backbone/fpn/inner_blocks.0/Conv"]) == {"head": 2, "fpn": 1}


def _with_an_outlier_channel(detector):
    """A copy of ``detector`` that computes the same in float but defeats per-tensor int8 activations at one
    place: channel 0 after ``layer1.0.bn1`` is scaled up 1000x (ReLU keeps the scale) and ``conv2`` reads it scaled
    down again. In int8, that one channel's range leaves every other channel of the tensor a handful of levels."""
    import copy

    outlier = copy.deepcopy(detector)
    block = outlier.backbone.body.layer1[0]
    with torch.no_grad():
        block.bn1.weight[0] *= 1000.0
        block.bn1.bias[0] *= 1000.0
        block.conv2.weight[:, 0] /= 1000.0
    return outlier


@pytest.mark.slow
def test_accuracy_control_returns_the_operation_that_int8_breaks_to_float(student, splits, tmp_path):
    detector, label_map = student
    outlier = _with_an_outlier_channel(detector)
    batch = example_batch(320)
    with torch.no_grad():  # the same detector in float
        assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(ExportableCore(outlier)(batch),
                                                                     ExportableCore(detector)(batch)))
    result = quantize_core_openvino_with_accuracy_control(
        outlier, splits[0], splits[1], label_map, OpenVinoQuantConfig(calibration_images=4), tmp_path / "ac.xml",
        max_drop_points=1.0, validation_images=4)
    assert any(name.startswith("/backbone/body/layer1/layer1.0/conv2/") for name in result.reverted_ops), \
        result.reverted_ops
    details = result.as_dict()
    assert details["reverted_parts"].get("layer1", 0) >= 1
    accuracy = details["accuracy_control"]
    assert accuracy["max_drop_points"] == 1.0 and accuracy["validation_images"] == 4 and accuracy["evaluations"] > 2
    loader = make_loader(val_subset(splits[1], 4), batch_size=4, train=False)  # the slice it measured on
    maps = [evaluate(EndToEndDetector(outlier, OpenVinoCore(path)), loader, label_map, progress=False)["map"]
            for path in (result.fp32_path, result.int8_path)]
    assert maps[0] - maps[1] <= 0.01 + 1e-9  # within the budget on the images it was measured on
    with pytest.raises(ConfigError, match="max_drop_points"):
        quantize_core_openvino_with_accuracy_control(detector, splits[0], splits[1], label_map,
                                                     OpenVinoQuantConfig(calibration_images=2), tmp_path / "x.xml",
                                                     max_drop_points=-1)


SIGNAL_STACK_AFTER_OPENVINO = """
import ctypes, faulthandler, sys, tempfile
from pathlib import Path
faulthandler.enable()  # what pytest does: Python's own alternate signal stack on this thread
from compresskit.models import load_preset
from compresskit.runtimes import get_runtime
from compresskit.runtimes.openvino import _SignalStack

def stack():
    now = _SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(now))
    return now.ss_sp, now.ss_size, now.ss_flags

before = stack()
detector = load_preset("student")[0]
get_runtime("openvino").core_for(detector, threads=1, artifact_dir=Path(tempfile.mkdtemp()), record_id="s")
sys.exit(0 if stack() == before else 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack is read through Linux's libc")
def test_a_process_keeps_its_signal_stack_after_openvino_starts_its_cpu_engine():
    # In a fresh process: the CPU plugin installs its own stack the first time it starts an engine there.
    result = subprocess.run([sys.executable, "-c", SIGNAL_STACK_AFTER_OPENVINO], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack is read through Linux's libc")
def test_signal_stack_kept_puts_back_a_stack_replaced_inside_it():
    sigaltstack = ctypes.CDLL(None).sigaltstack

    def stack():
        now = _SignalStack()
        sigaltstack(None, ctypes.byref(now))
        return now.ss_sp, now.ss_size, now.ss_flags

    before = stack()
    replacement = ctypes.create_string_buffer(64 * 1024)
    with signal_stack_kept():
        sigaltstack(ctypes.byref(_SignalStack(ctypes.addressof(replacement), 0, len(replacement))), None)
        assert stack()[0] == ctypes.addressof(replacement)
    assert stack() == before
