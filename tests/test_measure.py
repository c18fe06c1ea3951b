"""The measuring harness: known counts on tiny models, size, latency bookkeeping, environment stamp."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresskit import measure
from compresskit.errors import CompressKitError


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


def test_each_distinct_payload_is_compressed_once(monkeypatch) -> None:
    import gzip

    from compresskit.measure import size

    calls = []
    real_compress = gzip.compress
    monkeypatch.setattr(size.gzip, "compress", lambda data, **kw: calls.append(len(data)) or real_compress(data, **kw))
    payload = bytes(range(256)) * 64 + b"distinct to this test"
    first, again = measure.serialized_size(payload), measure.serialized_size(bytearray(payload))
    other = measure.serialized_size(payload + b"!")
    assert first == again and len(calls) == 2  # the repeat is answered from its digest
    assert other.gzip_bytes == len(real_compress(payload + b"!", compresslevel=measure.GZIP_LEVEL, mtime=0))


def test_processes_share_gzip_sizes_through_the_size_cache(monkeypatch, tmp_path) -> None:
    from compresskit.measure import size

    shared = tmp_path / "sizes" / "gzip-sizes.txt"
    monkeypatch.setenv("COMPRESSKIT_SIZE_CACHE", str(shared))
    monkeypatch.setattr(size, "_GZIP_SIZES", {})  # a fresh process
    payload = bytes(range(256)) * 64 + b"shared between processes"
    measured = measure.serialized_size(payload)
    assert shared.read_text().count("\n") == 1
    with shared.open("a") as file:
        file.write("a-torn-line 12")  # a writer cut short: no newline, never read
    monkeypatch.setattr(size, "_GZIP_SIZES", {})  # another process
    monkeypatch.setattr(size.gzip, "compress", lambda *args, **kwargs: pytest.fail("compressed again"))
    assert measure.serialized_size(payload) == measured
    assert "a-torn-line" not in size._GZIP_SIZES


def test_latency_statistics_and_threads_restored() -> None:
    net = small_net().eval()
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    result = measure.measure_latency(net, torch.randn(1, 3, 32, 32), warmup=2, runs=12, threads=threads)
    assert torch.get_num_threads() == before
    assert 0 < result.median_ms <= result.p90_ms
    assert (result.runs, result.threads, result.batch) == (12, threads, 1)
    entry = result.as_record((32, 32))
    assert set(entry) == {"median", "p90", "runs", "batch", "threads", "input", "noisy"}
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
    with pytest.raises(CompressKitError, match="at least 1 timed runs"):
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    session = measure.onnxruntime_session(path, threads=1)
    array = np.ones((1, 16), dtype=np.float32)
    (output,) = session.run(None, {"x": array})
    np.testing.assert_allclose(output, array @ weight, rtol=1e-5)
    result = measure.measure_latency(lambda x: session.run(None, {"x": x}), (array,), warmup=1, runs=5, threads=1)
    assert result.batch == 1 and result.runs == 5 and result.median_ms > 0
    assert measure.serialized_size(path).bytes == path.stat().st_size
    assert measure.serialized_size(model) == measure.serialized_size(path)  # an in-memory ModelProto, as saved


def test_environment_stamp_keys() -> None:
    stamp = measure.environment_stamp()
    for key in ("python", "torch", "torchvision", "torchao", "onnxruntime", "torch_pruning", "cpu", "isa",
                "threads", "torch_cpu_capability"):
        assert key in stamp
    assert isinstance(stamp["isa"], list) and stamp["isa"] == sorted(stamp["isa"])
    assert set(stamp["isa"]) <= set(measure.ISA_FLAGS)
    assert stamp["torch"] and stamp["threads"] == torch.get_num_threads()


def test_count_macs_leaves_every_shared_module_in_its_own_mode():
    from compresskit.models import EMBEDDED_PRESETS, build_detector
    from compresskit.models.core import ExportableCore, example_batch

    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    wrapper = torch.nn.Sequential(detector.backbone)  # a new wrapper starts in training mode
    measure.count_macs(wrapper, example_batch(64))
    measure.count_macs(ExportableCore(detector), example_batch(64))
    assert not any(module.training for module in detector.modules())


# --------------------------------------------------------------------------------------------- noise and pairs
def test_latency_noisy_when_p90_far_above_median() -> None:
    steady = measure.Latency(median_ms=10.0, p90_ms=14.0, runs=30, threads=2, batch=1)
    jumpy = measure.Latency(median_ms=10.0, p90_ms=16.0, runs=30, threads=2, batch=1)
    assert measure.NOISY_P90_OVER_MEDIAN == 1.5
    assert not steady.noisy and jumpy.noisy
    assert steady.as_record((8, 8))["noisy"] is False and jumpy.as_record((8, 8))["noisy"] is True


class FakeClock:
    """perf_counter for measure.latency's timings: each call of a timed function advances it by a known cost."""

    def __init__(self, seed: int = 5) -> None:
        self.now = 0.0
        self.calls: list[str] = []
        self.rng = np.random.default_rng(seed)

    def perf_counter(self) -> float:
        return self.now

    def function(self, name: str, cost_s: float, first_call_penalty: float = 0.0):
        def call() -> None:
            # Even global call numbers are the first call of a pair when there is no warm-up: a cold cache.
            cold = 1.0 + (first_call_penalty if len(self.calls) % 2 == 0 else 0.0)
            self.calls.append(name)
            self.now += cost_s * cold * (1.0 + 0.05 * abs(self.rng.standard_normal()))
        return call


def paired_on_fake_clock(monkeypatch, *, seed: int = 0, penalty: float = 0.3) -> measure.PairedLatency:
    clock = FakeClock()
    monkeypatch.setattr(measure.latency, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    same = clock.function("a", 0.010, penalty), clock.function("b", 0.010, penalty)
    return measure.compare_latency(*same, (), warmup=0, pairs=30, seed=seed)


def test_compare_latency_with_itself_cancels_a_first_call_penalty(monkeypatch) -> None:
    # Whichever side runs first in a pair is 30 % slower: always timing A first would report A 1.3x slower.
    result = paired_on_fake_clock(monkeypatch)
    assert 0.8 <= result.speedup <= 1.25
    assert result.low <= 1.0 <= result.high
    assert result.baseline.runs == result.candidate.runs == 30
    assert not result.holds(1.1) and not result.contradicts(0.9)


def test_bootstrap_interval_is_deterministic_per_seed(monkeypatch) -> None:
    first = paired_on_fake_clock(monkeypatch, seed=0, penalty=0.0)
    again = paired_on_fake_clock(monkeypatch, seed=0, penalty=0.0)
    other = paired_on_fake_clock(monkeypatch, seed=1, penalty=0.0)
    assert first == again
    assert other.speedup == first.speedup  # the same timings: only the resampling changed
    assert (other.low, other.high) != (first.low, first.high)
    assert first.low < first.speedup < first.high


def test_compare_latency_with_itself_on_the_real_clock() -> None:
    net = small_net().eval()
    result = measure.compare_latency(net, net, torch.randn(1, 3, 32, 32), warmup=3, pairs=30, threads=1)
    assert 0.8 <= result.speedup <= 1.25
    assert result.low < 1.25 and result.high > 0.8  # an interval around 1, not somewhere else
    assert result.baseline.batch == result.candidate.batch == 1


def test_compare_latency_detects_a_three_times_slower_copy() -> None:
    # Sleeping costs the same wall time however busy the CPU is, so the 3x holds on a loaded machine.
    def slow() -> None:
        time.sleep(0.009)

    def fast() -> None:
        time.sleep(0.003)

    result = measure.compare_latency(slow, fast, (), warmup=1, pairs=20)
    assert result.speedup > 2 and result.low > 1.5
    assert result.holds(1.5) and not result.contradicts(1.5) and not result.noisy
    assert result.baseline.median_ms > 2 * result.candidate.median_ms
    reverse = measure.compare_latency(fast, slow, (), warmup=1, pairs=20)
    assert reverse.speedup < 0.5 and reverse.contradicts(1.0)


def test_compare_latency_alternates_order_per_pair(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(measure.latency, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    measure.compare_latency(clock.function("a", 0.01), clock.function("b", 0.01), (), warmup=2, pairs=4)
    assert clock.calls[:4] == ["a", "b", "a", "b"]  # warm-up of both sides
    assert clock.calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_compare_latency_inputs_threads_and_errors() -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    seen: list[tuple[str, int, type]] = []

    def baseline(batch: torch.Tensor) -> None:
        seen.append(("baseline", torch.get_num_threads(), type(batch)))

    def candidate(array: np.ndarray) -> None:
        seen.append(("candidate", torch.get_num_threads(), type(array)))

    images = torch.zeros(2, 3, 8, 8)
    result = measure.compare_latency(baseline, candidate, images, candidate_inputs=images.numpy(), warmup=1,
                                     pairs=3, threads=wanted)
    assert torch.get_num_threads() == before
    assert len(seen) == 8 and {threads for _, threads, _ in seen} == {wanted}
    assert {kind for side, _, kind in seen if side == "candidate"} == {np.ndarray}
    assert {kind for side, _, kind in seen if side == "baseline"} == {torch.Tensor}
    assert (result.threads, result.baseline.batch, result.candidate.batch) == (wanted, 2, 2)

    def broken(_: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure.compare_latency(baseline, broken, images, threads=wanted)
    assert torch.get_num_threads() == before
    with pytest.raises(CompressKitError, match="at least 2 timed runs"):
        measure.compare_latency(baseline, baseline, images, pairs=1)


def paired(speedup: float, low: float, high: float) -> measure.PairedLatency:
    side = measure.Latency(median_ms=10.0, p90_ms=11.0, runs=30, threads=2, batch=1)
    return measure.PairedLatency(speedup=speedup, low=low, high=high, pairs=30, threads=2, baseline=side,
                                 candidate=side)


@pytest.mark.parametrize("speedup, low, high, noisy", [
    (1.0, 0.95, 1.05, False),  # no speed-up, and a tight interval says so
    (2.0, 1.9, 2.1, False),
    (1.3, 0.9, 1.5, True),  # claims 1.3x but cannot even tell the direction
    (2.0, 1.2, 2.4, True),  # excludes 1 but 60 % wide
    (1.05, 0.98, 1.12, False),  # straddles 1 but claims nothing
])
def test_paired_noise_rule(speedup: float, low: float, high: float, noisy: bool) -> None:
    assert paired(speedup, low, high).noisy is noisy


def test_paired_claims_and_record() -> None:
    result = paired(1.93456, 1.85123, 2.01987)
    assert result.holds(1.85) and not result.holds(1.9)
    assert result.contradicts(2.5) and not result.contradicts(2.0)
    assert result.as_record("q/base") == {
        "baseline": "q/base", "speedup": 1.9346, "interval": [1.8512, 2.0199], "pairs": 30, "threads": 2,
        "method": "median of per-pair ratios, interleaved, 95% bootstrap interval", "noisy": False}
