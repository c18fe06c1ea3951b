"""One measuring harness for every variant: parameters, MACs, serialized size, CPU latency, environment.

Counting only: every lesson measures through these functions so that numbers from different techniques are
comparable (docs/method.md, "Measurement"); tables and figures of the results live in :mod:`compresskit.report`.
Introduced in ``01_baseline_detectors.ipynb``. The rooms:

- :mod:`~compresskit.measure.counts`: :func:`count_params`, :func:`count_nonzero_params`, :func:`count_macs`;
- :mod:`~compresskit.measure.size`: :func:`serialized_size` and :class:`SizeInfo` (raw and gzip bytes);
- :mod:`~compresskit.measure.latency`: :func:`measure_latency`, the interleaved :func:`compare_latency`, their
  summaries :class:`Latency` and :class:`PairedLatency` and the noise rules;
- :mod:`~compresskit.measure.environment`: :func:`environment_stamp` (versions, CPU, ISA flags).

Calling convention shared by :func:`count_macs`, :func:`measure_latency` and :func:`compare_latency`: a
``tuple`` of inputs is unpacked into positional arguments; anything else (a batch tensor for a core, a *list* of
image tensors for a torchvision detector, a NumPy array for an ONNX Runtime lambda) is passed as the single
argument.
"""

from compresskit.measure.counts import count_macs, count_nonzero_params, count_params
from compresskit.measure.environment import ISA_FLAGS, environment_stamp
from compresskit.measure.latency import (BOOTSTRAP_RESAMPLES, NOISY_P90_OVER_MEDIAN, PAIRED_FAR_FROM_ONE,
                                         PAIRED_MAX_RELATIVE_WIDTH, PAIRED_METHOD, Latency, PairedLatency,
                                         baseline_drifted, compare_latency, interval_is_noisy,
                                         measure_latency)
from compresskit.measure.size import GZIP_LEVEL, SizeInfo, serialized_size

__all__ = ["BOOTSTRAP_RESAMPLES", "GZIP_LEVEL", "ISA_FLAGS", "Latency", "NOISY_P90_OVER_MEDIAN", "PAIRED_FAR_FROM_ONE",
           "PAIRED_MAX_RELATIVE_WIDTH", "PAIRED_METHOD", "PairedLatency", "SizeInfo", "compare_latency",
           "baseline_drifted", "count_macs", "count_nonzero_params", "count_params", "environment_stamp", "interval_is_noisy",
           "measure_latency", "serialized_size"]
