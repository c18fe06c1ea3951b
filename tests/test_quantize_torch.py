"""Torch-side quantization: the article's dynamic call, fp16 storage/compute, torchao PT2E static int8."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from compresskit.data import load_split
from compresskit.engine import evaluate, make_loader
from compresskit.errors import ConfigError
from compresskit.measure import environment_stamp, serialized_size
from compresskit.models import EMBEDDED_PRESETS, build_detector
from compresskit.models.core import EndToEndDetector, ExportableCore, example_batch
from compresskit.quantize.dynamic import (HalfCompute, article_dynamic_quant, fp16_compute, fp16_storage,
                                          fp16_to_float, module_type_counts, torchao_dynamic_quant)
from compresskit.quantize.pt2e import (Pt2eConfig, needs_reduce_range, prepare_qat_core, quantize_pt2e,
                                       separate_call_sites_, x86_quantizer)
from compresskit.quantize.qat import QatConfig, QatDetector, qat_finetune

# Mean |int8 - fp32| over mean |fp32|, per head output, on real images after 2 calibration images. Measured on
# the shipped student: 0.8 % (class logits), 1.3 % (boxes), 4.8 % (centerness); 10 % leaves room for other
# calibration draws and still fails for a wrong scale or a conv that lost its weights. (Random-noise inputs are
# far outside the calibrated ranges: they are not used to judge int8 accuracy.)
INT8_MEAN_RELATIVE_ERROR = 0.10


@pytest.fixture(scope="module")
def student_train(student, tiny_embedded):
    return load_split("train", tiny_embedded, label_map=student[1])


def _toy_with_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def _relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    return ((reference - candidate).abs().mean() / reference.abs().mean()).item()


# ------------------------------------------------------------------------------------------------ dynamic
def test_article_call_leaves_every_conv2d_float(student):
    detector, _ = student
    result = article_dynamic_quant(detector)
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == result.before["Conv2d"] > 0
    assert all(type(m) is nn.Conv2d and m.weight.dtype == torch.float32 for m in convs)
    assert result.before == result.after and result.after["quantized"] == 0 and result.changed == []
    assert any("deprecated" in text for text in result.warnings)
    assert result.model is not detector
    assert serialized_size(result.model).bytes == pytest.approx(serialized_size(detector).bytes, rel=0.01)


def test_article_call_quantizes_linear_so_the_counts_can_see_a_change():
    result = article_dynamic_quant(_toy_with_linear())
    assert result.before == {"Conv2d": 1, "Linear": 1, "quantized": 0}
    assert result.after == {"Conv2d": 1, "Linear": 0, "quantized": 1}
    assert result.changed == ["2"] and type(result.model[0]) is nn.Conv2d


def test_torchao_dynamic_quant_touches_linear_only(student):
    toy = torchao_dynamic_quant(_toy_with_linear())
    assert toy.changed == ["2"] and toy.model[0].weight.dtype == torch.float32
    assert module_type_counts(torchao_dynamic_quant(student[0]).model)["quantized"] == 0


def test_fp16_storage_halves_the_state_dict_and_round_trips(student):
    detector, _ = student
    half = fp16_storage(detector)
    floats = [v for v in half.state_dict().values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert next(detector.parameters()).dtype == torch.float32  # the input is untouched
    ratio = serialized_size(half).bytes / serialized_size(detector).bytes
    assert 0.49 < ratio < 0.55
    restored = build_detector(EMBEDDED_PRESETS["student"]).eval()
    restored.load_state_dict(half.state_dict())  # load_state_dict casts fp16 values into the fp32 tensors
    for name, value in detector.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(restored.state_dict()[name], value, rtol=1e-3, atol=1e-4), name
    with torch.no_grad():
        batch = example_batch(320)
        for a, b in zip(ExportableCore(detector)(batch), ExportableCore(fp16_to_float(half))(batch)):
            assert _relative_error(a, b) < 0.01


def test_fp16_compute_runs_the_core_in_half(student):
    detector, _ = student
    half = fp16_compute(ExportableCore(detector))
    assert isinstance(half, HalfCompute) and next(half.parameters()).dtype == torch.float16
    batch = example_batch(320)
    with torch.no_grad():
        outputs = half(batch)
        for a, b in zip(ExportableCore(detector)(batch), outputs):
            assert b.dtype == torch.float32 and _relative_error(a, b) < 0.02
        wrapped = fp16_compute(detector)  # a detector: half core, fp32 pre/post-processing (NMS has no Half)
        assert isinstance(wrapped, EndToEndDetector)
        detections = wrapped([torch.rand(3, 320, 320)])
    assert detections[0]["boxes"].dtype == torch.float32
    assert next(detector.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------------------------------ pt2e
def _weight_dequantize_of_a_tiny_conv(config: Pt2eConfig):
    """The op that dequantizes the weight of one conv after ``config``'s calibration and convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from compresskit.quantize.pt2e import export_for_quantization

    torch.manual_seed(0)
    example = torch.randn(1, 3, 8, 8)
    prepared = prepare_pt2e(export_for_quantization(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), example),
                            x86_quantizer(config))
    prepared(example)
    (conv,) = [node for node in convert_pt2e(prepared).graph.nodes if node.target == torch.ops.aten.conv2d.default]
    return conv.args[1].target


def test_per_tensor_weights_are_allowed_without_compile():
    dequantize = torch.ops.quantized_decomposed
    assert _weight_dequantize_of_a_tiny_conv(Pt2eConfig(compile=False)) == dequantize.dequantize_per_channel.default
    per_tensor = Pt2eConfig(per_channel=False, compile=False)  # with compile=True it is refused (tests/test_configs)
    assert _weight_dequantize_of_a_tiny_conv(per_tensor) == dequantize.dequantize_per_tensor.default


def test_reduce_range_follows_vnni(monkeypatch):
    assert needs_reduce_range(["avx", "avx2", "fma"]) is True
    assert needs_reduce_range(["avx2", "avx512_vnni"]) is False
    assert needs_reduce_range(["avx2", "avx_vnni"]) is False
    assert needs_reduce_range(["amx_int8"]) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN capped below VNNI, whatever the CPU has
    assert needs_reduce_range() is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # a cap that keeps VNNI: the CPU decides
    assert needs_reduce_range() is needs_reduce_range(environment_stamp()["isa"])


def test_separate_call_sites_fixes_prepare_on_reused_modules():
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    torch.manual_seed(0)
    core = ExportableCore(build_detector(EMBEDDED_PRESETS["student"])).eval()
    batch = example_batch(128)
    config = Pt2eConfig(compile=False)
    shared = torch.export.export(core, (batch,)).module()
    with pytest.raises(ValueError, match="more than one output node"):  # the bug the fix is for
        prepare_pt2e(shared, x86_quantizer(config))
    fixed = torch.export.export(core, (batch,)).module()
    assert separate_call_sites_(fixed) > 0
    assert separate_call_sites_(fixed) == 0  # idempotent
    prepared = prepare_pt2e(fixed, x86_quantizer(config))
    observers = [m for m in prepared.modules() if "Observer" in type(m).__name__]
    assert len(observers) > 40


@pytest.fixture(scope="module")
def student_int8(student, student_train):
    """The student's core quantized by PT2E on 2 calibration images, not compiled, plus the untouched check."""
    detector, _ = student
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    quantized = quantize_pt2e(detector, student_train, Pt2eConfig(calibration_images=2, compile=False))
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    return quantized


@pytest.fixture(scope="module")
def student_batch(student, student_train):
    from compresskit.quantize.calibration import calibration_batches

    return torch.cat(calibration_batches(student[0], student_train, 2, seed=7))


def test_quantize_pt2e_student_agrees_with_fp32(student, student_int8, student_batch):
    summary = student_int8.summary
    assert summary["convs"] == summary["quantized_convs"] == 56 and summary["float_convs"] == 0
    state = student_int8.converted.state_dict()
    assert sum(v.dtype == torch.int8 for v in state.values()) == 28  # one weight per module: the head not copied
    assert not [k for k, v in state.items() if v.is_floating_point() and v.dim() == 4]  # fp32 weights stripped
    with torch.no_grad():
        reference, outputs = ExportableCore(student[0])(student_batch), student_int8(student_batch)
    for a, b in zip(reference, outputs):
        assert a.shape == b.shape and 0 < _relative_error(a, b) < INT8_MEAN_RELATIVE_ERROR
    with pytest.raises(ConfigError, match="exported for inputs"):
        student_int8(example_batch(256))


def test_pt2e_artifact_is_smaller_and_reloads(student, student_int8, student_batch):
    artifact = student_int8.artifact_bytes()
    assert len(artifact) < 0.6 * serialized_size(ExportableCore(student[0])).bytes
    image = student_batch[:1]
    with torch.no_grad():
        expected = student_int8(image)
        again = torch.export.load(io.BytesIO(artifact)).module()(image)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(again, expected))


def test_quantize_pt2e_calibration_count_errors(student, student_train):
    with pytest.raises(ConfigError, match="only 24"):
        quantize_pt2e(student[0], student_train, Pt2eConfig(calibration_images=25, compile=False))


def test_qat_core_is_trainable(student):
    detector, _ = student
    batch = example_batch(128, batch=2)
    qat = prepare_qat_core(detector, batch)
    assert any("FakeQuant" in type(m).__name__ for m in qat.modules())
    outputs = qat(batch)
    sum(o.float().pow(2).mean() for o in outputs).backward()
    grads = [p.grad for p in qat.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in detector.parameters())  # a copy was prepared


@pytest.mark.slow
def test_compiled_pt2e_core_runs_int8_kernels(student, student_train, student_batch):
    detector, _ = student
    compiled = quantize_pt2e(detector, student_train, Pt2eConfig(calibration_images=2))
    lowered = compiled.summary["lowered"]
    int8_calls = sum(n for name, n in lowered.items() if "qconv" in name)
    assert int8_calls == compiled.summary["convs"] == 56  # the shared head's convs too
    assert "aten::convolution" not in lowered
    assert compiled.summary["untied_weights"] > 0 and compiled.compile_seconds > 0
    with torch.no_grad():
        reference, outputs = ExportableCore(detector)(student_batch), compiled(student_batch)
        simulated = compiled.converted(student_batch[:1])
    for a, b, c in zip(reference, outputs, simulated):
        assert _relative_error(a, b) < INT8_MEAN_RELATIVE_ERROR
        # The oneDNN kernels compute what the converted graph simulates, up to rounding of the fused
        # requantization (measured 0.2 %, 0.3 %, 1.3 %).
        assert _relative_error(c, b[:1]) < 0.03
    # Evaluation and latency call it under inference_mode with inference tensors; neither compiles again.
    with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
        compiled(student_batch.clone())
        compiled(student_batch)


# ------------------------------------------------------------------------------------------------ QAT
def test_qat_detector_returns_the_detectors_losses_and_trains_only_the_fake_quant_core(student, student_train):
    detector, _ = student
    qat_core = prepare_qat_core(detector, torch.zeros(1, 3, 320, 320), Pt2eConfig(reduce_range=False))
    model = QatDetector(detector, qat_core, 320)
    assert {id(p) for p in model.parameters()} == {id(p) for p in qat_core.parameters()}
    images, targets = zip(*(student_train[i] for i in range(2)))
    model.train()
    losses = model(list(images), list(targets))
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in qat_core.parameters())
    assert all(p.grad is None for p in detector.parameters())
    model.eval()
    with torch.no_grad():
        detections = model(list(images))
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= set(detections[0])
    with pytest.raises(ConfigError, match="up to 320x320"):
        model.run_core(torch.zeros(1, 3, 352, 320))


@pytest.mark.slow
def test_qat_finetune_runs_in_the_engine_and_converts_to_int8(student, student_train, tiny_embedded, tmp_path):
    detector, label_map = student
    before = {key: value.clone() for key, value in detector.state_dict().items()}
    config = QatConfig(batch_size=2, max_iters_per_epoch=2, warmup_iters=1, compile=False, reduce_range=False)
    result = qat_finetune(detector, student_train, tmp_path / "qat", config, progress=False)
    assert (tmp_path / "qat" / "last.pt").is_file()  # resumable like every kit run
    assert len(result.history) == 1 and all(math.isfinite(v) for v in result.history[0]["losses"].values())
    summary = result.core.summary
    assert summary["convs"] > 0 and summary["quantized_convs"] == summary["convs"]  # every conv int8
    assert all(torch.equal(value, before[key]) for key, value in detector.state_dict().items())  # untouched
    val = load_split("val", tiny_embedded, label_map=label_map)
    metrics = evaluate(EndToEndDetector(detector, result.core), make_loader(val, batch_size=1, train=False), label_map,
                       progress=False)
    assert 0.0 <= metrics["map"] <= 1.0
    assert result.as_dict()["qat_config"]["max_iters_per_epoch"] == 2
