"""The measuring harness: known counts on tiny models, size, latency bookkeeping, environment stamp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresskit import measure
from compresskit.errors import CompressKitError
from compresskit.runtimes import onnxruntime_session


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


class FakeClock:
    """The clock of measure.latency in a test: time moves only while a timed function "runs", by its cost.

    Noise-free costs are multiples of 1/1024 s (``MS``), so sums and differences of clock readings are exact and a
    statistic can be compared with ``==``.
    """

    def __init__(self, seed: int = 5) -> None:
        self.now = 0.0
        self.calls: list[str] = []
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> float:
        return self.now

    def function(self, name: str, *costs_s: float, jitter: float = 0.0, first_call_penalty: float = 0.0):
        """A callable that advances the clock by its costs in turn (repeating the last), plus noise: ``jitter``
        adds a random (half-normal) share of about that fraction, ``first_call_penalty`` that fraction when the
        call is the first of a pair (an even global call number, as warm-ups come in pairs: a cold cache)."""
        def call() -> None:
            cost = costs_s[min(self.calls.count(name), len(costs_s) - 1)]
            cold = 1.0 + (first_call_penalty if len(self.calls) % 2 == 0 else 0.0)
            self.calls.append(name)
            noise = 1.0 + jitter * abs(self.rng.standard_normal()) if jitter else 1.0
            self.now += cost * cold * noise
        return call


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(measure.latency, "_clock", fake)
    return fake


MS = 1 / 1024  # about a millisecond, exactly representable: costs below are multiples of it


def test_latency_median_and_p90_of_the_timed_runs_only(clock) -> None:
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    seen_threads: list[int] = []
    # Two slow warm-up calls, then 11..20 units: the warm-up must not reach the statistics.
    timed = clock.function("net", 100 * MS, 100 * MS, *(k * MS for k in range(11, 21)))
    result = measure.measure_latency(lambda: (seen_threads.append(torch.get_num_threads()), timed()), (),
                                     warmup=2, runs=10, threads=threads, batch=4)
    assert torch.get_num_threads() == before and set(seen_threads) == {threads} and len(seen_threads) == 12
    unit_ms = MS * 1000
    assert result.median_ms == 15.5 * unit_ms and result.p90_ms == pytest.approx(19.1 * unit_ms, rel=1e-12)
    assert (result.runs, result.threads, result.batch) == (10, threads, 4)
    assert result.as_record((32, 48)) == {"median": round(15.5 * unit_ms, 3), "p90": round(19.1 * unit_ms, 3),
                                          "runs": 10, "batch": 4, "threads": threads, "input": [32, 48],
                                          "noisy": False}


def test_latency_is_noisy_when_one_run_in_ten_was_interrupted(clock) -> None:
    steady = measure.measure_latency(clock.function("steady", 10 * MS), (), warmup=0, runs=10)
    interrupted = measure.measure_latency(clock.function("interrupted", *[10 * MS] * 9, 100 * MS), (),
                                          warmup=0, runs=10)
    assert steady.median_ms == steady.p90_ms == interrupted.median_ms == 10 * MS * 1000
    assert interrupted.p90_ms == pytest.approx(19 * MS * 1000)  # a tenth of the way from 10 to 100 units
    assert not steady.noisy and interrupted.noisy and interrupted.as_record((8, 8))["noisy"] is True


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
    session = onnxruntime_session(path, threads=1)
    array = np.ones((1, 16), dtype=np.float32)
    (output,) = session.run(None, {"x": array})
    np.testing.assert_allclose(output, array @ weight, rtol=1e-5)
    outputs = []
    result = measure.measure_latency(lambda x: outputs.append(session.run(None, {"x": x})[0]), (array,), warmup=1,
                                     runs=5, threads=1)
    assert result.batch == 1 and result.runs == 5 and len(outputs) == 6  # one warm-up call, five timed
    assert all(np.array_equal(each, output) for each in outputs)  # the session was timed doing the real work
    assert measure.serialized_size(path).bytes == path.stat().st_size
    assert measure.serialized_size(model) == measure.serialized_size(path)  # an in-memory ModelProto, as saved


def test_environment_stamp_records_this_process_and_the_cpu_flags(monkeypatch) -> None:
    import importlib.metadata
    import platform

    import onnxruntime
    import torchvision

    from compresskit.measure import environment

    flags = frozenset({"fma", "sse4_2", "avx2", "avx512_vnni", "amx_int8"})  # sse4_2 is no flag the stamp keeps
    monkeypatch.setattr(environment, "_cpuinfo", lambda: ("Test CPU @ 2.0GHz", flags))
    monkeypatch.setitem(environment._DISTRIBUTIONS, "missing", ("no-such-distribution",))
    stamp = measure.environment_stamp()
    assert stamp["cpu"] == "Test CPU @ 2.0GHz" and stamp["isa"] == ["amx_int8", "avx2", "avx512_vnni", "fma"]
    assert stamp["python"] == platform.python_version() and stamp["threads"] == torch.get_num_threads()
    assert torch.__version__.startswith(stamp["torch"]) and torchvision.__version__.startswith(stamp["torchvision"])
    assert stamp["onnxruntime"] == onnxruntime.__version__
    assert stamp["torch_pruning"] == importlib.metadata.version("torch-pruning")
    assert stamp["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert stamp["missing"] is None  # a package that is not installed is recorded as absent, not an error


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


def test_compare_latency_of_a_candidate_exactly_twice_as_fast(clock) -> None:
    result = measure.compare_latency(clock.function("baseline", 16 * MS), clock.function("candidate", 8 * MS), (),
                                     warmup=2, pairs=30)
    assert (result.speedup, result.low, result.high) == (2.0, 2.0, 2.0)  # every pair's ratio is 2
    assert result.baseline.median_ms == 2 * result.candidate.median_ms == 16 * MS * 1000
    assert result.pairs == result.baseline.runs == result.candidate.runs == 30
    assert result.holds(2.0) and not result.holds(2.01) and result.contradicts(2.01) and not result.noisy
    assert result.as_record("base")["speedup"] == 2.0 and result.as_record("base")["interval"] == [2.0, 2.0]


def test_compare_latency_speedup_is_the_median_of_the_per_pair_ratios(clock) -> None:
    # The candidate's 30 timed calls cost 4, 8, 12 ... 120 units against a steady 24: ratios 6, 3, 2 ... 0.2.
    candidate_costs = [k * 4 * MS for k in range(1, 31)]
    result = measure.compare_latency(clock.function("baseline", 24 * MS), clock.function("candidate", *candidate_costs),
                                     (), warmup=0, pairs=30)
    ratios = sorted(24 / (k * 4) for k in range(1, 31))
    assert result.speedup == pytest.approx((ratios[14] + ratios[15]) / 2, rel=1e-12)
    assert result.candidate.median_ms == pytest.approx(15.5 * 4 * MS * 1000, rel=1e-12)  # medians of times agree
    assert result.low < result.speedup < result.high and ratios[0] <= result.low and result.high <= ratios[-1]


def test_compare_latency_with_itself_cancels_a_first_call_penalty(clock) -> None:
    # Whichever side runs first in a pair is 50 % slower: always timing A first would report A 1.5x slower.
    same = clock.function("a", 16 * MS, first_call_penalty=0.5), clock.function("b", 16 * MS, first_call_penalty=0.5)
    result = measure.compare_latency(*same, (), warmup=0, pairs=30)
    # Half of the pairs say 1.5, half 1/1.5, so each side's timings are alike and the interval straddles 1.
    assert result.baseline == result.candidate and result.baseline.median_ms == 20 * MS * 1000
    assert result.speedup == pytest.approx((1.5 + 1 / 1.5) / 2)
    assert 1 / 1.5 <= result.low <= 1.0 <= result.high <= 1.5
    assert not result.holds(1.1) and not result.contradicts(0.9)


def test_compare_latency_detects_a_three_times_slower_copy(clock) -> None:
    slow, fast = clock.function("slow", 24 * MS, jitter=0.05), clock.function("fast", 8 * MS, jitter=0.05)
    result = measure.compare_latency(slow, fast, (), warmup=1, pairs=20)
    assert 2.7 < result.low <= result.speedup <= result.high < 3.3
    assert result.holds(2.5) and not result.contradicts(2.5) and not result.noisy
    reverse = measure.compare_latency(fast, slow, (), warmup=1, pairs=20)
    assert 1 / 3.3 < reverse.speedup < 1 / 2.7 and reverse.contradicts(1.0) and not reverse.holds(1.0)


def test_compare_latency_of_an_erratic_candidate_is_noisy(clock) -> None:
    # The candidate is twice as fast in some pairs and no faster in others: no claim survives such a run.
    erratic = [8 * MS if fast else 16 * MS for fast in np.random.default_rng(3).random(20) < 0.5]
    result = measure.compare_latency(clock.function("baseline", 16 * MS), clock.function("candidate", *erratic), (),
                                     warmup=0, pairs=20)
    assert result.noisy and result.low <= 1.25 and result.high == 2.0
    assert not result.holds(1.5) and not result.contradicts(1.0)


def test_bootstrap_interval_is_deterministic_per_seed(clock) -> None:
    def paired(seed: int) -> measure.PairedLatency:
        clock.now, clock.calls, clock.rng = 0.0, [], np.random.default_rng(5)  # the same timings for every seed
        return measure.compare_latency(clock.function("a", 16 * MS, jitter=0.05),
                                       clock.function("b", 16 * MS, jitter=0.05), (), warmup=0, pairs=30, seed=seed)

    first, again, other = paired(0), paired(0), paired(1)
    assert first == again
    assert other.speedup == first.speedup and other.baseline == first.baseline  # only the resampling changed
    assert (other.low, other.high) != (first.low, first.high)
    assert first.low < first.speedup < first.high


def test_compare_latency_alternates_order_per_pair(clock) -> None:
    measure.compare_latency(clock.function("a", MS), clock.function("b", MS), (), warmup=2, pairs=4)
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
