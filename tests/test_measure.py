"""The measuring harness: known counts on tiny models, size, latency bookkeeping, environment stamp."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresskit import measure


def small_net() -> nn.Sequential:
    # Conv 3->8 3x3: 216 + 8 = 224; Linear 8->4: 32 + 4 = 36; total 260.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def test_params_and_nonzero_of_known_model() -> None:
    net = small_net()
    assert measure.count_params(net) == 260
    assert measure.count_nonzero_params(net) == 260
    with torch.no_grad():
        net[4].bias.zero_()
    assert measure.count_params(net) == 260
    assert measure.count_nonzero_params(net) == 256


def test_shared_parameter_counted_once() -> None:
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert measure.count_params(net) == 20
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    assert measure.count_params(tied) == 16
    assert measure.count_nonzero_params(tied) == 16


def test_nonzero_sees_torch_prune_mask_before_and_after_remove() -> None:
    net = small_net()
    conv = net[0]
    prune.l1_unstructured(conv, "weight", amount=0.5)
    assert measure.count_params(net) == 260  # weight_orig is counted, the mask buffer is not
    assert measure.count_nonzero_params(net) == 260 - 108
    prune.remove(conv, "weight")
    assert measure.count_nonzero_params(net) == 260 - 108


def test_macs_of_conv_and_linear() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert measure.count_macs(conv, torch.randn(1, 3, 16, 16)) == 3 * 8 * 9 * 16 * 16
    linear = nn.Linear(20, 7)
    assert measure.count_macs(linear, torch.randn(5, 20)) == 20 * 7 * 5
    # A tuple is unpacked into positional arguments, a list is passed whole (a detector's images).
    assert measure.count_macs(lambda a, b: a @ b, (torch.randn(2, 3), torch.randn(3, 4))) == 2 * 3 * 4
    assert measure.count_macs(lambda images: [linear(image) for image in images],
                              [torch.randn(1, 20), torch.randn(1, 20)]) == 2 * 20 * 7


def test_macs_leaves_training_mode_as_it_was() -> None:
    net = small_net().train()
    assert measure.count_macs(net, torch.randn(1, 3, 8, 8)) == 3 * 8 * 9 * 8 * 8 + 8 * 4
    assert net.training


def test_serialized_size_sparse_gzips_smaller(tmp_path) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(256, 256)
    zeroed = nn.Linear(256, 256)
    with torch.no_grad():
        zeroed.weight.zero_()
        zeroed.bias.zero_()
    dense_size, zero_size = measure.serialized_size(dense), measure.serialized_size(zeroed)
    assert isinstance(dense_size, measure.SizeInfo)
    assert dense_size.bytes > 257 * 256 * 4  # raw float32 payload plus the pickle wrapper
    assert abs(dense_size.bytes - zero_size.bytes) < 64  # zeros are still stored raw
    assert dense_size.gzip_bytes > 0.8 * dense_size.bytes  # random floats barely compress
    assert zero_size.gzip_bytes < dense_size.gzip_bytes / 20
    assert measure.serialized_size(dense.state_dict()) == dense_size
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"\0" * 10_000)
    from_file = measure.serialized_size(artifact)
    assert from_file.bytes == 10_000 and from_file.gzip_bytes < 200
    assert measure.serialized_size(str(artifact)) == from_file


def test_latency_statistics_and_threads_restored() -> None:
    net = small_net().eval()
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    result = measure.measure_latency(net, torch.randn(1, 3, 32, 32), warmup=2, runs=12, threads=threads)
    assert torch.get_num_threads() == before
    assert 0 < result.median_ms <= result.p90_ms
    assert (result.runs, result.threads, result.batch) == (12, threads, 1)
    entry = result.as_record((32, 32))
    assert set(entry) == {"median", "p90", "runs", "batch", "threads", "input"}
    assert entry["input"] == [32, 32] and entry["runs"] == 12
    assert entry["median"] == round(result.median_ms, 3)


def test_latency_counts_calls_and_restores_threads_on_error() -> None:
    calls: list[int] = []

    def fn(images: list) -> None:
        calls.append(len(images))

    result = measure.measure_latency(fn, [torch.zeros(3, 8, 8)] * 3, warmup=3, runs=7)
    assert len(calls) == 10 and result.batch == 3
    before = torch.get_num_threads()

    def broken(_: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        measure.measure_latency(broken, torch.zeros(1), threads=before + 1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        measure.measure_latency(fn, [torch.zeros(1)], runs=0)


def test_onnxruntime_session_latency(tmp_path) -> None:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    # A hand-built MatMul graph keeps the test independent of the torch exporter.
    weight = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(weight, name="w")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = measure.onnxruntime_session(path, threads=1)
    array = np.ones((1, 16), dtype=np.float32)
    (output,) = session.run(None, {"x": array})
    np.testing.assert_allclose(output, array @ weight, rtol=1e-5)
    result = measure.measure_latency(lambda x: session.run(None, {"x": x}), (array,), warmup=1, runs=5, threads=1)
    assert result.batch == 1 and result.runs == 5 and result.median_ms > 0
    assert measure.serialized_size(path).bytes == path.stat().st_size


def test_environment_stamp_keys() -> None:
    stamp = measure.environment_stamp()
    for key in ("python", "torch", "torchvision", "torchao", "onnxruntime", "torch_pruning", "cpu", "isa",
                "threads", "torch_cpu_capability"):
        assert key in stamp
    assert isinstance(stamp["isa"], list) and stamp["isa"] == sorted(stamp["isa"])
    assert set(stamp["isa"]) <= set(measure.ISA_FLAGS)
    assert stamp["torch"] and stamp["threads"] == torch.get_num_threads()


def test_format_table_units_and_missing_values() -> None:
    records = [
        {"id": "a/base", "technique": "baseline", "runtime": "torch-eager", "map": 0.6123, "params": 2_500_000,
         "nonzero_params": 2_500_000, "macs": 1_230_000_000, "size_bytes": 10_000_000,
         "size_gzip_bytes": 9_000_000, "latency_ms": {"median": 21.3456}},
        {"id": "a/other", "technique": "fp16", "runtime": "onnxruntime"},
    ]
    lines = measure.format_table(records).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    assert lines[2].split() == ["a/base", "baseline", "torch-eager", "61.2", "2.50", "2.50", "1.23", "10.00",
                                "9.00", "21.35"]
    assert lines[3].split()[3:] == ["-"] * 7
    assert len({len(line) for line in lines[:3]}) == 1  # fixed width
    with pytest.raises(ValueError, match="unknown table columns"):
        measure.format_table(records, columns=("id", "nope"))


def test_count_macs_leaves_every_shared_module_in_its_own_mode():
    from compresskit.models import EMBEDDED_PRESETS, build_detector
    from compresskit.models.core import DetectorCore, example_batch

    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    wrapper = torch.nn.Sequential(detector.backbone)  # a new wrapper starts in training mode
    measure.count_macs(wrapper, example_batch(64))
    measure.count_macs(DetectorCore(detector), example_batch(64))
    assert not any(module.training for module in detector.modules())
