"""ONNX Runtime static int8 quantization of the detector core (compresskit.quantize.ort and .profile)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from compresskit.data import load_split
from compresskit.engine import evaluate, make_loader
from compresskit.errors import CheckpointError, CompressKitError, ConfigError
from compresskit.models.core import EndToEndDetector, ExportableCore
from compresskit.quantize import ort as ort_quant
from compresskit.measure.environment import VNNI_FLAGS, environment_stamp
from compresskit.quantize.ort import OrtQuantConfig, choose_activations, choose_reduce_range, quantize_core_onnx
from compresskit.report import plot_op_profile
from compresskit.quantize.profile import (PARTS, int8_report, onnx_bytes_by_kind, op_time_profile, part_node_names,
                                          part_of_node, require_onnxruntime)
from compresskit.runtimes import OnnxCore

CALIBRATION_IMAGES = 4
# Measured on the shipped student (4 calibration images): cosine similarity of int8 vs fp32 outputs >= 0.997.
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def train_split(student, tiny_embedded):
    return load_split("train", tiny_embedded, train_transforms=False, label_map=student[1])


@pytest.fixture(scope="module")
def quantized(student, train_split, tmp_path_factory):
    """The student's core quantized once; counts the images the calibration reader hands to ORT."""
    fed = []
    original = ort_quant._CalibrationReader.get_next

    def counting_get_next(self):
        item = original(self)
        if item is not None:
            fed.append(next(iter(item.values())).shape[0])
        return item

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ort_quant._CalibrationReader, "get_next", counting_get_next)
        result = quantize_core_onnx(student[0], train_split, OrtQuantConfig(calibration_images=CALIBRATION_IMAGES),
                                    tmp_path_factory.mktemp("ort") / "student-int8.onnx")
    return result, sum(fed)


@pytest.fixture(scope="module")
def core_batch(student, train_split):
    """One core input the calibration did not see (the last train image; calibration picks 4 of 24 by seed)."""
    with torch.inference_mode():
        return student[0].eval().transform([train_split[len(train_split) - 1][0]])[0].tensors.clone()


# ------------------------------------------------------------------------------------------------ config
def test_config_round_trips_through_json():  # its refusals: tests/test_configs.py
    config = OrtQuantConfig(calibration_images=8, method="entropy", activations="int8", exclude=("head", "fpn"))
    assert OrtQuantConfig(**json.loads(json.dumps(asdict(config)))) == config


def test_reduce_range_is_chosen_where_uint8_x_int8_sums_can_saturate():
    assert choose_reduce_range(None, "uint8", isa=["avx", "avx2", "fma"], machine="x86_64")[0] is True
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert choose_reduce_range(None, "uint8", isa=["avx2", vnni], machine="x86_64")[0] is False
    assert choose_reduce_range(None, "int8", isa=["avx2"], machine="x86_64")[0] is False  # no u8 x s8 kernel
    assert choose_reduce_range(None, "int8", isa=[], machine="aarch64")[0] is False
    assert choose_reduce_range(True, "int8", isa=["avx512_vnni"], machine="x86_64")[0] is True
    assert choose_reduce_range(False, "uint8", isa=["avx2"], machine="x86_64")[0] is False
    # The default config leaves the choice to the CPU: 7 bits without VNNI, 8 with it.
    default = OrtQuantConfig().reduce_range
    assert choose_reduce_range(default, "uint8", isa=["avx2"], machine="x86_64")[0] is True
    assert choose_reduce_range(default, "uint8", isa=["avx2", "avx512_vnni"], machine="x86_64")[0] is False


def test_auto_activations_pick_uint8_on_x86_and_int8_on_arm():
    kind, reason = choose_activations("auto", machine="x86_64")
    assert kind == "uint8" and "uint8 activations" in reason
    assert choose_activations("auto", machine="aarch64")[0] == "int8"
    assert choose_activations("int8", machine="x86_64")[0] == "int8"


def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CompressKitError, match="pip install onnxruntime"):
        require_onnxruntime()


# ------------------------------------------------------------------------------------------------ quantized file
def test_int8_file_stores_int8_weights_and_reads_exactly_n_images(quantized):
    result, images_fed = quantized
    assert images_fed == CALIBRATION_IMAGES == result.calibration_images
    import onnx

    model = onnx.load(str(result.int8_path))
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 56  # the student's core: every conv stays a Conv between Q/DQ in the file
    largest_weight = 0
    for conv in convs:
        dequantize = producers[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        weight = initializers[dequantize.input[0]]
        assert weight.data_type == onnx.TensorProto.INT8 and len(weight.dims) == 4
        largest_weight = max(largest_weight, int(np.abs(onnx.numpy_helper.to_array(weight).astype(np.int32)).max()))
        assert len(initializers[dequantize.input[1]].dims) == 1  # one scale per output channel
        assert len(dequantize.input) == 2  # its all-zero zero point is ONNX's default, so compaction dropped it
    bias_types = {initializers[producers[conv.input[2]].input[0]].data_type for conv in convs if len(conv.input) > 2}
    assert bias_types == {onnx.TensorProto.INT32}
    assert result.activations == "uint8" and result.input_shape == (1, 3, 320, 320)
    # 7-bit weights exactly where this CPU lacks VNNI (the default decides), and ORT really wrote them so
    assert result.reduce_range is not set(environment_stamp()["isa"]) & set(VNNI_FLAGS)
    assert largest_weight == (64 if result.reduce_range else 127)  # per-channel symmetric: each channel's max


def test_bytes_by_kind_add_up_and_the_int8_file_is_much_smaller(quantized):
    result, _ = quantized
    fp32, int8 = onnx_bytes_by_kind(result.fp32_path), onnx_bytes_by_kind(result.int8_path)
    assert sum(fp32.values()) == result.fp32_path.stat().st_size
    assert sum(int8.values()) == result.int8_path.stat().st_size
    assert int8["float_weights"] == 0 and fp32["int8_weights"] == 0
    assert int8["int8_weights"] * 4 == pytest.approx(fp32["float_weights"], rel=0.01)
    assert result.size_ratio > 3.4  # measured 3.55 on the student, 3.86 on the teacher (names weigh less there)


def test_int8_report_counts_what_onnxruntime_runs_as_int8(student, quantized):
    result, _ = quantized
    conv_modules = sum(isinstance(module, torch.nn.Conv2d) for module in student[0].modules())  # shared per level
    int8, fp32 = int8_report(result.int8_path), int8_report(result.fp32_path)
    assert int8["saved_nodes"]["QLinearConv"] == 0 and int8["saved_nodes"]["Conv"] == 56
    assert int8["saved_nodes"]["DequantizeLinear"] > 56
    assert (int8["int8_convs"], int8["fp32_convs"]) == (56, 0)  # uint8 activations: every conv fuses on x86
    assert (fp32["int8_convs"], fp32["fp32_convs"]) == (0, 56)
    assert fp32["initializers"].get("int8", 0) == 0 and int8["initializers"]["int8"] >= conv_modules


def test_fp32_file_matches_the_eager_core_and_int8_stays_close(student, quantized, core_batch):
    result, _ = quantized
    with torch.inference_mode():
        eager = ExportableCore(student[0].eval())(core_batch)
    fp32, int8 = OnnxCore(result.fp32_path, threads=1)(core_batch), OnnxCore(result.int8_path, threads=1)(core_batch)
    for reference, exported in zip(eager, fp32):  # compaction and pre-processing change no result
        torch.testing.assert_close(exported, reference, atol=1e-4, rtol=1e-4)
    for reference, quantized_output in zip(fp32, int8):
        assert not torch.equal(reference, quantized_output)  # it really is another computation
        cosine = torch.nn.functional.cosine_similarity(reference.flatten(), quantized_output.flatten(), dim=0)
        assert cosine > MIN_COSINE


def test_int8_core_evaluates_end_to_end(student, quantized, tiny_embedded):
    detector, label_map = student
    val = load_split("val", tiny_embedded, label_map=label_map)
    loader = make_loader(val, batch_size=1, train=False)  # a fixed-shape core takes batch 1
    metrics = {name: evaluate(EndToEndDetector(detector, OnnxCore(path, threads=1)), loader, label_map, progress=False)
               for name, path in (("fp32", quantized[0].fp32_path), ("int8", quantized[0].int8_path))}
    assert math.isfinite(metrics["int8"]["map"]) and metrics["fp32"]["map"] > 0.1
    assert abs(metrics["int8"]["map"] - metrics["fp32"]["map"]) < 0.1


# ------------------------------------------------------------------------------------------------ parts
def test_parts_map_exported_node_names(quantized):
    groups = part_node_names(quantized[0].fp32_path)
    assert all(name.startswith("/backbone/body/layer2/") for name in groups["layer2"]) and groups["layer2"]
    assert all(groups[part] for part in PARTS)
    assert len(groups["cls_logits"]) == 5  # one conv per FPN level, sharing weights
    convs_in_other = [n for n in groups["other"] if n.endswith("/Conv")]
    assert convs_in_other == []
    assert part_of_node("/head/classification_head/conv/conv.0_3/Conv") == "head"
    assert part_of_node("/head/regression_head/bbox_ctrness_2/Conv") == "bbox_ctrness"
    assert part_of_node("/backbone/body/stem/stem.0/Conv") == "stem"


def test_excluding_the_head_keeps_its_convs_float(student, train_split, tmp_path):
    result = quantize_core_onnx(student[0], train_split, OrtQuantConfig(calibration_images=2, exclude=("head",)),
                                tmp_path / "int8.onnx")
    import onnx

    model = onnx.load(str(result.int8_path))
    initializers = {init.name: init for init in model.graph.initializer}
    float_convs = [node.name for node in model.graph.node
                   if node.op_type == "Conv" and node.input[1] in initializers
                   and initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT]
    head_convs = [name for name in part_node_names(result.fp32_path)["head"] if name.endswith("/Conv")]
    head = student[0].head
    tower_convs = sum(isinstance(module, torch.nn.Conv2d)
                      for branch in (head.classification_head.conv, head.regression_head.conv)
                      for module in branch.modules())
    assert sorted(float_convs) == sorted(head_convs) and len(head_convs) == tower_convs * 5  # 5 FPN levels
    assert int8_report(result.int8_path)["fp32_convs"] == tower_convs * 5
    with pytest.raises(ConfigError, match="matches no node"):
        quantize_core_onnx(student[0], train_split, OrtQuantConfig(calibration_images=1, exclude=("/nope/",)),
                           tmp_path / "other.onnx")


def test_ranges_from_the_calibration_cache_give_the_same_bytes(student, train_split, tmp_path, monkeypatch):
    """A cached calibration quantizes bit for bit like a fresh one, for another ``exclude`` too (the sensitivity
    scan shares one), and still says how many images produced the ranges."""
    cache = tmp_path / "ranges.json"
    plain, head_float = (OrtQuantConfig(calibration_images=2, exclude=exclude) for exclude in ((), ("head",)))
    fresh = {config.exclude: quantize_core_onnx(student[0], train_split, config, tmp_path / f"fresh{index}.onnx")
             for index, config in enumerate((plain, head_float))}
    writes = quantize_core_onnx(student[0], train_split, plain, tmp_path / "writes.onnx", calibration_cache=cache)
    assert cache.is_file()
    monkeypatch.setattr(ort_quant._CalibrationReader, "get_next", lambda self: pytest.fail("calibrated again"))
    reads = quantize_core_onnx(student[0], train_split, head_float, tmp_path / "reads.onnx", calibration_cache=cache)
    assert writes.int8_path.read_bytes() == fresh[()].int8_path.read_bytes()
    assert reads.int8_path.read_bytes() == fresh[("head",)].int8_path.read_bytes()
    assert reads.calibration_images == writes.calibration_images == 2


# ------------------------------------------------------------------------------------------------ failures
def test_failure_leaves_no_file(student, train_split, tmp_path, monkeypatch):
    import onnxruntime.quantization

    out = tmp_path / "int8.onnx"
    with pytest.raises(ConfigError, match="only 24"):
        quantize_core_onnx(student[0], train_split, OrtQuantConfig(calibration_images=25), out)

    def broken_quantize(*args, **kwargs):
        raise RuntimeError("calibration crashed")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken_quantize)
    with pytest.raises(RuntimeError, match="calibration crashed"):
        quantize_core_onnx(student[0], train_split, OrtQuantConfig(calibration_images=1), out)
    assert list(tmp_path.iterdir()) == []


def test_failed_second_write_leaves_neither_file(tmp_path, monkeypatch):
    import onnx

    model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    saved = []

    def save_then_fail(proto, path):
        if saved:
            raise OSError("disk full")
        saved.append(path)
        open(path, "wb").write(proto.SerializeToString())

    monkeypatch.setattr(onnx, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ort_quant._save_all_or_none({tmp_path / "a.onnx": model, tmp_path / "b.onnx": model})
    assert list(tmp_path.iterdir()) == []


def test_detector_is_left_untouched(student, train_split, tmp_path):
    detector = student[0].train()
    before = {name: value.clone() for name, value in detector.state_dict().items()}
    quantize_core_onnx(detector, train_split, OrtQuantConfig(calibration_images=1), tmp_path / "int8.onnx")
    assert detector.training and all(module.training for module in detector.modules())
    assert all(torch.equal(before[name], value) for name, value in detector.state_dict().items())
    detector.eval()


def test_missing_or_corrupt_onnx_file_is_named(tmp_path):
    corrupt = tmp_path / "core.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model at all")
    for call in (int8_report, onnx_bytes_by_kind, part_node_names,
                 lambda path: op_time_profile(path, np.zeros((1, 3, 32, 32), dtype=np.float32))):
        for path in (corrupt, tmp_path / "missing.onnx"):
            with pytest.raises(CheckpointError, match=str(path.name)):
                call(path)


# ------------------------------------------------------------------------------------------------ profile
def test_op_profile_times_convs_and_plots(quantized, core_batch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT would drop its trace here if the profile prefix were ignored
    fp32 = op_time_profile(quantized[0].fp32_path, core_batch, runs=2, threads=1, warmup=1)
    int8 = op_time_profile(quantized[0].int8_path, core_batch, runs=2, threads=1, warmup=1)
    assert "Conv" in fp32 and "QLinearConv" in int8 and "Conv" not in int8
    assert all(ms > 0 for ms in fp32.values()) and list(fp32.values()) == sorted(fp32.values(), reverse=True)
    assert list(tmp_path.iterdir()) == []
    figure = plot_op_profile({"fp32": fp32, "int8": int8}, top=3)
    axes = figure.axes[0]
    labels = [tick.get_text() for tick in axes.get_yticklabels()]
    assert len(labels) == 4 and labels[-1] == "other" and len(axes.containers) == 2
    assert "milliseconds" in axes.get_xlabel()
    with pytest.raises(ConfigError):
        op_time_profile(quantized[0].fp32_path, core_batch, runs=0)
