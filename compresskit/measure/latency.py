"""CPU latency: one callable timed alone (:func:`measure_latency`) or two interleaved (:func:`compare_latency`).

Holds the timing summaries :class:`Latency` and :class:`PairedLatency` and the noise rules a reader can apply by eye
(``NOISY_P90_OVER_MEDIAN`` for one callable, :func:`interval_is_noisy` for a paired speed-up; docs/method.md, "Measurement"). Inputs
follow the package's calling convention (see :mod:`compresskit.measure`). ONNX Runtime sessions are built with
:func:`compresskit.runtimes.onnxruntime_session`. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from compresskit import settings
from compresskit.errors import CompressKitError
from compresskit.measure.counts import _as_args

# A p90 this far above the median means other work interrupted some timed runs, so the median is suspect too.
NOISY_P90_OVER_MEDIAN = 1.5
# A paired interval straddling 1.0 is only suspicious when the speed-up itself claims at least this much.
PAIRED_FAR_FROM_ONE = 1.1
# A paired interval wider than this fraction of the speed-up cannot support a claim either way.
PAIRED_MAX_RELATIVE_WIDTH = 0.5
# A baseline's median in the pairs against its own median measured earlier in the same run: beyond this factor
# either way, the machine's load changed between the two, and a ratio taken under the new load is not trusted.
BASELINE_DRIFT_MAX = 1.25
BOOTSTRAP_RESAMPLES = 2000
PAIRED_METHOD = "median of per-pair ratios, interleaved, 95% bootstrap interval"
# Seconds, read before and after every timed call. A test swaps in a fake clock to check the statistics exactly.
_clock: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class Latency:
    """Timing summary of one measured callable (milliseconds)."""

    median_ms: float
    p90_ms: float
    runs: int
    threads: int
    batch: int

    @property
    def noisy(self) -> bool:
        """True when p90 / median exceeds ``NOISY_P90_OVER_MEDIAN``: other work interrupted the timed runs."""
        return self.median_ms > 0 and self.p90_ms / self.median_ms > NOISY_P90_OVER_MEDIAN

    def as_record(self, input_hw: Sequence[int]) -> dict[str, Any]:
        """The ``latency_ms`` entry of a results record (docs/method.md, "Results records").

        Args:
            input_hw: the (height, width) of the measured input.

        Returns:
            ``{"median", "p90", "runs", "batch", "threads", "input": [h, w], "noisy"}`` with times rounded to
            3 decimals.
        """
        height, width = (int(side) for side in input_hw)
        return {"median": round(self.median_ms, 3), "p90": round(self.p90_ms, 3), "runs": self.runs,
                "batch": self.batch, "threads": self.threads, "input": [height, width], "noisy": self.noisy}


def interval_is_noisy(*, speedup: float, low: float, high: float) -> bool:
    """The noise rule of a paired comparison, kept simple so a reader can apply it by eye.

    Noisy when either (a) the interval contains 1.0 although the speed-up claims at least
    ``PAIRED_FAR_FROM_ONE`` (or at most its inverse): the run cannot even tell the direction; or (b) the interval
    is wider than ``PAIRED_MAX_RELATIVE_WIDTH`` (50 %) of the speed-up.

    Args:
        speedup: median of the per-pair ratios.
        low, high: its interval.

    Returns:
        True when the measurement should be repeated on a quieter machine.
    """
    far_from_one = speedup >= PAIRED_FAR_FROM_ONE or speedup <= 1.0 / PAIRED_FAR_FROM_ONE
    straddles = low <= 1.0 <= high and far_from_one
    return straddles or (high - low) > PAIRED_MAX_RELATIVE_WIDTH * speedup


def baseline_drifted(in_pairs_ms: float, alone_ms: float) -> bool:
    """Whether a baseline timed in a paired comparison ran more than ``BASELINE_DRIFT_MAX`` times slower or faster
    than when it was timed before in the same run: the load changed, and a tight interval can still be wrong (the
    two sides of a pair need not suffer the same from a neighbour's load)."""
    ratio = in_pairs_ms / alone_ms
    return not 1.0 / BASELINE_DRIFT_MAX <= ratio <= BASELINE_DRIFT_MAX


@dataclass(frozen=True)
class PairedLatency:
    """Speed-up of a candidate over a baseline from interleaved timed runs (see :func:`compare_latency`).

    ``speedup`` is the median of the per-pair ratios t_baseline / t_candidate (>1: the candidate is faster),
    ``low``..``high`` a 95 % bootstrap interval of that median; ``baseline`` and ``candidate`` summarise each side's
    own timings from the same run.
    """

    speedup: float
    low: float
    high: float
    pairs: int
    threads: int
    baseline: Latency
    candidate: Latency

    @property
    def noisy(self) -> bool:
        """Whether the interval is too loose to trust (the rule is :func:`interval_is_noisy`)."""
        return interval_is_noisy(speedup=self.speedup, low=self.low, high=self.high)

    def holds(self, at_least: float) -> bool:
        """True when even the low end of the interval reaches ``at_least``: the claimed speed-up survives noise."""
        return self.low >= at_least

    def contradicts(self, at_least: float) -> bool:
        """True when even the high end of the interval stays below ``at_least``: the claim is refuted."""
        return self.high < at_least

    def as_record(self, baseline_id: str) -> dict[str, Any]:
        """The ``paired_latency`` entry of a results record (docs/method.md, "Results records").

        Args:
            baseline_id: id of the baseline record, which must be the record's own ``baseline``.

        Returns:
            ``{"baseline", "speedup", "interval": [low, high], "pairs", "threads", "method", "noisy"}``, floats
            rounded to 4 decimals.
        """
        return {"baseline": baseline_id, "speedup": round(self.speedup, 4),
                "interval": [round(self.low, 4), round(self.high, 4)], "pairs": self.pairs,
                "threads": self.threads, "method": PAIRED_METHOD, "noisy": self.noisy}


def _infer_batch(args: tuple) -> int:
    first = args[0] if args else None
    if isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim >= 4:
        return int(first.shape[0])
    if isinstance(first, (list, tuple)):  # a detector's list of images
        return len(first)
    return 1


def _check_counts(*, timed: int, minimum: int, warmup: int, threads: int) -> None:
    if timed < minimum or warmup < 0 or threads < 1:
        raise CompressKitError(f"need at least {minimum} timed runs, warmup >= 0 and threads >= 1; got {timed} "
                               f"timed, {warmup=}, {threads=}")


@contextlib.contextmanager
def _timing_conditions(threads: int) -> Iterator[None]:
    """Fix torch's intra-op threads (restored afterwards), flush denormals, no autograd."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    # Denormal floats in pruned or fine-tuned weights make CPU timings erratic; torch has no getter to restore.
    torch.set_flush_denormal(True)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(previous_threads)


def _summary(timings_ms: Sequence[float], *, threads: int, batch: int) -> Latency:
    return Latency(median_ms=float(np.median(timings_ms)), p90_ms=float(np.percentile(timings_ms, 90)),
                   runs=len(timings_ms), threads=threads, batch=batch)


def measure_latency(fn: Callable[..., Any], inputs: Any, *, warmup: int = 5, runs: int = 30,
                    threads: int | None = None, batch: int | None = None) -> Latency:
    """Time ``fn(*inputs)`` on the CPU: warm-up calls, then ``runs`` timed calls; median and p90.

    torch's intra-op thread count is fixed to ``threads`` for the measurement and restored afterwards.
    Flush-denormal mode is switched on (and left on: torch offers no getter) because denormal floats in
    pruned or fine-tuned weights can make CPU timings erratic. For ONNX Runtime the thread count is the
    session's own: build it with :func:`compresskit.runtimes.onnxruntime_session` using the same ``threads``.
    To compare two variants use :func:`compare_latency`: medians measured one after the other drift on a busy
    machine.

    Args:
        fn: the callable to time (a model, a compiled model, or a lambda calling an ORT session).
        inputs: a tuple of positional inputs or a single input (see :mod:`compresskit.measure`).
        warmup: untimed calls first (caches, allocator, torch.compile, ORT's first-run setup).
        runs: timed calls; a reported number takes at least 30 (docs/method.md).
        threads: torch intra-op threads during the measurement (default: ``COMPRESSKIT_THREADS``, else 2).
        batch: batch size to record; inferred from a 4-D first input or a list of images when omitted.

    Returns:
        A :class:`Latency`.
    """
    threads = settings.threads(threads)
    _check_counts(timed=runs, minimum=1, warmup=warmup, threads=threads)
    args = _as_args(inputs)
    timings_ms: list[float] = []
    with _timing_conditions(threads):
        for _ in range(warmup):
            fn(*args)
        for _ in range(runs):
            start = _clock()
            fn(*args)
            timings_ms.append((_clock() - start) * 1000.0)
    return _summary(timings_ms, threads=threads, batch=batch if batch is not None else _infer_batch(args))


def _bootstrap_median_interval(ratios: np.ndarray, *, seed: int,
                               resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of ``ratios``; one seed, one interval."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ratios), size=(resamples, len(ratios)))
    low, high = np.percentile(np.median(ratios[picks], axis=1), [2.5, 97.5])
    return float(low), float(high)


def compare_latency(baseline_fn: Callable[..., Any], candidate_fn: Callable[..., Any], inputs: Any, *,
                    candidate_inputs: Any = None, warmup: int = 5, pairs: int = 30, threads: int | None = None,
                    batch: int | None = None, seed: int = 0) -> PairedLatency:
    """Speed-up of ``candidate_fn`` over ``baseline_fn`` from interleaved timed runs (docs/method.md, "Measurement").

    Both sides are warmed up, then timed in ``pairs`` pairs: baseline then candidate in even pairs, candidate
    then baseline in odd ones, so whatever favours the first (or second) call of a pair cancels out, and load
    that comes and goes hits both sides of a pair alike. Threads and denormals are fixed as in
    :func:`measure_latency`.

    Args:
        baseline_fn, candidate_fn: the callables to compare (e.g. the fp32 and the int8 detector).
        inputs: input of both sides, a tuple of positional inputs or a single input (see :mod:`compresskit.measure`).
        candidate_inputs: the candidate's own input when it takes another form of the same data (e.g. a NumPy
            array for an ONNX Runtime session); ``inputs`` when None.
        warmup: untimed calls of each side first.
        pairs: timed pairs; a reported number takes at least 30 (docs/method.md).
        threads: torch intra-op threads during the measurement (default: ``COMPRESSKIT_THREADS``, else 2;
            ORT sessions keep their own).
        batch: batch size to record; inferred from each side's input when omitted.
        seed: seed of the bootstrap, so the same timings always give the same interval.

    Returns:
        A :class:`PairedLatency`: ``speedup`` > 1 means the candidate is faster.
    """
    threads = settings.threads(threads)
    _check_counts(timed=pairs, minimum=2, warmup=warmup, threads=threads)
    sides = (baseline_fn, candidate_fn)
    arguments = (_as_args(inputs), _as_args(inputs if candidate_inputs is None else candidate_inputs))
    timings_ms: tuple[list[float], list[float]] = ([], [])
    with _timing_conditions(threads):
        for _ in range(warmup):
            for fn, args in zip(sides, arguments):
                fn(*args)
        for pair in range(pairs):
            for side in ((0, 1) if pair % 2 == 0 else (1, 0)):
                start = _clock()
                sides[side](*arguments[side])
                timings_ms[side].append((_clock() - start) * 1000.0)
    baseline_ms, candidate_ms = np.asarray(timings_ms[0]), np.asarray(timings_ms[1])
    # A coarse clock can read 0 for a trivial call; one nanosecond keeps the ratio finite.
    ratios = baseline_ms / np.maximum(candidate_ms, 1e-6)
    low, high = _bootstrap_median_interval(ratios, seed=seed)
    baseline_batch, candidate_batch = (batch if batch is not None else _infer_batch(args) for args in arguments)
    return PairedLatency(speedup=float(np.median(ratios)), low=low, high=high, pairs=pairs, threads=threads,
                         baseline=_summary(baseline_ms, threads=threads, batch=baseline_batch),
                         candidate=_summary(candidate_ms, threads=threads, batch=candidate_batch))
