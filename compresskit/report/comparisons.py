"""Comparisons of a record with its baseline (docs/method.md, "Results records"): ratios, paired speed-ups, and whether timings are noisy.

Ratios are only ever computed against the record named by ``baseline``, measured in the same run.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from typing import Any, Mapping

from compresskit import measure
from compresskit.report.records import ResultsFileError


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return float(numerator) / float(denominator)


def latency_median(record: Mapping[str, Any]) -> float | None:
    """The median latency (ms) of a record, or None when it was not timed."""
    return (record.get("latency_ms") or {}).get("median")


def latency_noisy(record: Mapping[str, Any]) -> bool | None:
    """Whether a record's own latency is noisy (p90 / median > ``measure.NOISY_P90_OVER_MEDIAN``).

    Args:
        record: a results record; its stored ``noisy`` flag is used, or recomputed for records written before
            the flag existed.

    Returns:
        True or False, or None when the record has no latency.
    """
    latency = record.get("latency_ms") or {}
    if latency.get("noisy") is not None:
        return bool(latency["noisy"])
    median, p90 = latency.get("median"), latency.get("p90")
    if median is None or p90 is None:
        return None
    return median > 0 and p90 / median > measure.NOISY_P90_OVER_MEDIAN


def compare(record: Mapping[str, Any], baseline_record: Mapping[str, Any]) -> dict[str, Any]:
    """What ``record`` buys and costs against its baseline (None where a value is missing).

    Args:
        record: the compressed variant.
        baseline_record: the record named by ``record["baseline"]`` (if that is set, ids must match).

    Returns:
        ``size_ratio`` and ``gzip_size_ratio`` (baseline bytes / record bytes, >1 means smaller),
        ``macs_ratio`` (baseline / record), ``map_drop_points`` ((baseline mAP - record mAP) x 100), and
        ``latency_speedup`` (>1 means faster): the paired speed-up when the record carries a ``paired_latency``
        against this baseline, with ``latency_interval`` [low, high] and its ``latency_noisy`` flag; otherwise
        the ratio of the two medians, no interval, and ``latency_noisy`` True when either side's timing is noisy.
    """
    wanted = record.get("baseline")
    if wanted is not None and wanted != baseline_record.get("id"):
        raise ResultsFileError(f"record {record.get('id')!r} is measured against {wanted!r}, "
                               f"not {baseline_record.get('id')!r}; compare it with its own baseline")
    map_drop = None
    if record.get("map") is not None and baseline_record.get("map") is not None:
        map_drop = (baseline_record["map"] - record["map"]) * 100.0
    paired = record.get("paired_latency")
    if paired and paired.get("baseline") == baseline_record.get("id"):
        low, high = (float(bound) for bound in paired["interval"])
        speedup, interval = float(paired["speedup"]), [low, high]
        noisy = bool(paired.get("noisy", measure.interval_is_noisy(speedup=speedup, low=low, high=high)))
    else:
        speedup, interval = _ratio(latency_median(baseline_record), latency_median(record)), None
        noisy = None if speedup is None else bool(latency_noisy(record) or latency_noisy(baseline_record))
    return {
        "size_ratio": _ratio(baseline_record.get("size_bytes"), record.get("size_bytes")),
        "gzip_size_ratio": _ratio(baseline_record.get("size_gzip_bytes"), record.get("size_gzip_bytes")),
        "macs_ratio": _ratio(baseline_record.get("macs"), record.get("macs")),
        "latency_speedup": speedup,
        "latency_interval": interval,
        "latency_noisy": noisy,
        "map_drop_points": map_drop,
    }
