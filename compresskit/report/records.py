"""Results records (a contract: docs/method.md, "Results records"): build, validate, read, merge-write atomically, tabulate as a frame.

Every measured variant becomes one record keyed by ``id``; a rerun replaces its own records and never
touches others. A record names the ``baseline`` it is compared against, measured in the same run (comparisons
are in :mod:`compresskit.report.comparisons`). Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from compresskit import measure, settings
from compresskit.data.files import atomic_write_bytes
from compresskit.engine.evaluation import METRIC_NAMES
from compresskit.errors import CompressKitError
from compresskit.runtimes import runtime_names

if TYPE_CHECKING:  # heavy optional imports, only for annotations
    import pandas

SCHEMA = 1
RESULTS_NAME = "results.json"
RECORD_FIELDS = (
    "id", "lesson", "profile", "technique", "variant", "model", "baseline", "runtime", *METRIC_NAMES,
    "params", "nonzero_params", "macs", "macs_input", "size_bytes", "size_gzip_bytes", "latency_ms",
    "paired_latency", "train_seconds", "config",
)
# Fields added after schema 1 was first written: a record read from an older file gets None for them.
ADDED_FIELDS = ("paired_latency", "macs_input")
LATENCY_KEYS = ("median", "p90", "runs", "batch", "threads", "input")
PAIRED_KEYS = ("baseline", "speedup", "interval", "pairs")
TECHNIQUES = (
    "baseline", "unstructured_pruning", "structured_pruning", "dynamic_quant", "fp16", "static_ptq", "qat",
    "logit_kd", "feature_kd", "kd", "backbone", "combined", "box_kd",  # appended: figures keep their colours
)


class ResultsFileError(CompressKitError, ValueError):
    """A results file or record breaks the records contract (docs/method.md); the message names the file or record and the fix."""


# The two data profiles, plus "custom": a dataset of the user's own (its records name the dataset in their config).
RECORD_PROFILES = (*settings.PROFILES, "custom")


def _empty_document() -> dict[str, Any]:
    return {"schema": SCHEMA, "environment": {}, "records": []}


# --------------------------------------------------------------------------------------------- records
def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    # Dataclass configs (torchao style) are stored as their fields so the record round-trips through JSON.
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _paired_entry(paired: Mapping[str, Any], *, record_id: str, baseline: str | None) -> dict[str, Any]:
    """Validate ``PairedLatency.as_record(...)`` for a record; fill in ``noisy`` when a hand-built one lacks it."""
    if not isinstance(paired, Mapping):
        raise ResultsFileError(f"paired_latency of record {record_id!r} must be PairedLatency.as_record(baseline_id), "
                               f"got {type(paired).__name__}")
    missing = [key for key in PAIRED_KEYS if key not in paired]
    if missing:
        raise ResultsFileError(f"paired_latency of record {record_id!r} lacks {missing}; "
                               f"pass PairedLatency.as_record(baseline_id)")
    if paired["baseline"] != baseline:
        raise ResultsFileError(f"paired_latency of record {record_id!r} was measured against {paired['baseline']!r} "
                               f"but the record's baseline is {baseline!r}; pass the same baseline id to both")
    interval = paired["interval"]
    if not isinstance(interval, Sequence) or len(interval) != 2 or not float(interval[0]) <= float(interval[1]):
        raise ResultsFileError(f"paired_latency of record {record_id!r} needs interval [low, high] with low <= high, "
                               f"got {interval!r}; pass PairedLatency.as_record(baseline_id)")
    low, high = float(interval[0]), float(interval[1])
    entry = dict(paired, speedup=float(paired["speedup"]), interval=[low, high], pairs=int(paired["pairs"]))
    if "noisy" not in entry:
        entry["noisy"] = measure.interval_is_noisy(speedup=entry["speedup"], low=low, high=high)
    return entry


def make_record(*, id: str, lesson: str, profile: str, technique: str, model: str, runtime: str,
                metrics: Mapping[str, Any] | None, variant: str = "", baseline: str | None = None,
                params: int | None = None, nonzero_params: int | None = None, macs: int | None = None,
                macs_input: Sequence[int] | None = None,
                size: measure.SizeInfo | Sequence[int] | None = None, latency: Mapping[str, Any] | None = None,
                paired_latency: Mapping[str, Any] | None = None, train_seconds: float | None = None,
                config: Any = None) -> dict[str, Any]:
    """Build one validated results record with exactly the fields of the records contract (docs/method.md).

    Args:
        id: unique key, e.g. ``"quantization/teacher/ort-int8"``; a rerun with the same id replaces it.
        lesson: the notebook or command that produced it, e.g. ``"03_quantization"``.
        profile: the data profile the variant was actually evaluated on, ``"embedded"`` or ``"coco"``, or
            ``"custom"`` for a user's own dataset (``compresskit study``).
        technique: one of ``TECHNIQUES``.
        model: the preset measured (``teacher``, ``student``, a backbone name...).
        runtime: a registered runtime (:func:`compresskit.runtimes.runtime_names`).
        metrics: ``engine.evaluate``'s dict (COCOeval values in 0-1); its ``METRIC_NAMES`` keys are copied.
        variant: free text saying what exactly was done.
        baseline: id of the record this one is compared against (measured in the same run), or None.
        params, nonzero_params, macs: from :mod:`compresskit.measure`.
        macs_input: the (height, width) the core received when its MACs were counted (after the detector's own
            resize of a val image: ``models.core.core_input_size``).
        size: ``SizeInfo`` or ``(bytes, gzip_bytes)``; ``gzip_bytes`` may be None (not measured).
        latency: ``Latency.as_record(input_hw)``.
        paired_latency: ``PairedLatency.as_record(baseline)`` from ``measure.compare_latency`` against the
            baseline; its ``baseline`` must equal ``baseline``.
        train_seconds: wall time spent training/fine-tuning this variant, if any.
        config: settings that reproduce the variant (a mapping or a dataclass; values JSON-serialisable).

    Returns:
        The record as a plain dict.

    Raises:
        ResultsFileError (a ``ValueError``): a value breaks the contract; the message says which and how to fix it.
    """
    if not isinstance(id, str) or not id:
        raise ResultsFileError(f"record id must be a non-empty string, got {id!r}")
    if profile not in RECORD_PROFILES:
        raise ResultsFileError(f"unknown profile {profile!r} for record {id!r}; use one of "
                               f"{', '.join(RECORD_PROFILES)} (the profile the data was loaded with)")
    if technique not in TECHNIQUES:
        raise ResultsFileError(f"unknown technique {technique!r} for record {id!r}; use one of "
                               f"{', '.join(TECHNIQUES)}")
    if runtime not in runtime_names():
        raise ResultsFileError(f"unknown runtime {runtime!r} for record {id!r}; use one of "
                               f"{', '.join(runtime_names())} (or register it: compresskit.runtimes)")
    if baseline is not None and (not isinstance(baseline, str) or not baseline):
        raise ResultsFileError(f"baseline of record {id!r} must be a record id (string) or None, got {baseline!r}")
    if baseline == id:
        raise ResultsFileError(f"record {id!r} cannot be its own baseline")
    if latency is not None:
        missing = [key for key in LATENCY_KEYS if key not in latency]
        if missing:
            raise ResultsFileError(f"latency of record {id!r} lacks {missing}; pass Latency.as_record(input_hw)")
        latency = dict(latency)
    if paired_latency is not None:
        paired_latency = _paired_entry(paired_latency, record_id=id, baseline=baseline)
    size_bytes, size_gzip = (None, None) if size is None else (int(size[0]), _optional_int(size[1]))
    metrics = metrics or {}
    record: dict[str, Any] = {
        "id": id, "lesson": lesson, "profile": profile, "technique": technique,
        "variant": variant, "model": model, "baseline": baseline, "runtime": runtime,
    }
    record.update({key: _optional_float(metrics.get(key)) for key in METRIC_NAMES})
    record.update({
        "params": _optional_int(params), "nonzero_params": _optional_int(nonzero_params),
        "macs": _optional_int(macs), "macs_input": None if macs_input is None else [int(side) for side in macs_input],
        "size_bytes": size_bytes, "size_gzip_bytes": size_gzip,
        "latency_ms": latency, "paired_latency": paired_latency, "train_seconds": _optional_float(train_seconds),
        "config": _config_dict(config),
    })
    return record


def _check_record(record: Mapping[str, Any]) -> None:
    """The checks of :func:`make_record`, for records built by hand or read back."""
    missing = [field for field in RECORD_FIELDS if field not in record and field not in ADDED_FIELDS]
    if missing:
        raise ResultsFileError(f"record {record.get('id')!r} lacks fields {missing}; build it with make_record()")
    make_record(**{key: record[key] for key in ("id", "lesson", "profile", "technique", "model", "runtime",
                                                 "baseline")},
                metrics=None, latency=record["latency_ms"], paired_latency=record.get("paired_latency"))


# --------------------------------------------------------------------------------------------- files
def _results_path(path_or_dir: str | os.PathLike) -> Path:
    path = Path(path_or_dir).expanduser()
    return path / RESULTS_NAME if path.is_dir() or path.suffix != ".json" else path


def read_results(path_or_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a results document.

    Args:
        path_or_dir: a ``results.json`` file or the folder holding it.

    Returns:
        ``{"schema": 1, "environment": {...}, "records": [...]}``; an empty document if the file is missing.

    Raises:
        ResultsFileError (a ``ValueError``): the file is not a valid results document. It is left untouched.
    """
    path = _results_path(path_or_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _empty_document()

    def corrupt(reason: str) -> ResultsFileError:
        return ResultsFileError(f"{path} is not a valid results file ({reason}). It was left untouched: "
                                f"fix it, or move it aside to start a new one.")

    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise corrupt(f"invalid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("records"), list):
        raise corrupt("expected an object with a 'records' list")
    if document.get("schema") != SCHEMA:
        raise corrupt(f"schema {document.get('schema')!r}, this kit reads schema {SCHEMA}")
    bad = [index for index, record in enumerate(document["records"])
           if not isinstance(record, dict) or not isinstance(record.get("id"), str)]
    if bad:
        raise corrupt(f"records at positions {bad} have no string 'id'")
    document.setdefault("environment", {})
    for record in document["records"]:
        for field in ADDED_FIELDS:
            record.setdefault(field, None)
    return document


@contextlib.contextmanager
def _locked(results_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the results file so concurrent writers do not lose records.

    The lock file is removed on release, by its holder and while still locked. A writer that was waiting on a
    file removed meanwhile finds that the path no longer names the file it locked, and starts over on a new one.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; writes stay atomic, only concurrent merges are unprotected
        yield
        return
    results_path.parent.mkdir(parents=True, exist_ok=True)
    # A separate lock file because the results file itself is replaced by rename on every write.
    lock_path = results_path.with_name(results_path.name + ".lock")
    while True:
        lock = open(lock_path, "a")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino == os.fstat(lock.fileno()).st_ino:
                try:
                    yield
                finally:
                    # Removed while still locked: a waiter that then gets the unlinked file sees it and retries.
                    lock_path.unlink(missing_ok=True)
                return
        finally:
            lock.close()  # closing releases the flock


def _json_default(value: Any) -> Any:
    """Let configs carry Paths, NumPy/torch scalars and arrays, and dataclass configs."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # NumPy and torch scalars/arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in a results record is not JSON-serialisable: {value!r}")


def write_records(records: Sequence[Mapping[str, Any]], reports_dir: str | os.PathLike | None = None,
                  environment: Mapping[str, Any] | None = None) -> Path:
    """Merge ``records`` into ``reports_dir/results.json`` atomically, under a file lock.

    Records whose id is already in the file are replaced in place; the others keep their order and new
    ids are appended. Within ``records`` a repeated id keeps the last one (a re-run cell).

    Args:
        records: records from :func:`make_record`.
        reports_dir: folder of ``results.json``; defaults to ``settings.reports_dir()``.
        environment: stamp stored for the file; defaults to ``measure.environment_stamp()``.

    Returns:
        The path of the results file.

    Raises:
        ResultsFileError (a ``ValueError``): a record is invalid, its ``baseline`` is neither in this batch nor
            in the file, or the existing file is corrupt (it is then left untouched).
    """
    folder = Path(reports_dir).expanduser() if reports_dir is not None else settings.reports_dir()
    path = folder / RESULTS_NAME
    batch: dict[str, dict[str, Any]] = {}
    for record in records:
        _check_record(record)
        batch[record["id"]] = dict(record)
    stamp = dict(environment) if environment is not None else measure.environment_stamp()
    with _locked(path):
        document = read_results(path)
        known = {record["id"] for record in document["records"]} | set(batch)
        orphans = {record["id"]: record["baseline"] for record in batch.values()
                   if record["baseline"] is not None and record["baseline"] not in known}
        if orphans:
            raise ResultsFileError(f"baseline records not found in this batch nor in {path}: {orphans}; "
                                   f"measure the baseline in the same run and write it with these records")
        merged = [batch.pop(record["id"], record) for record in document["records"]]
        merged.extend(batch.values())
        document.update({"schema": SCHEMA, "environment": stamp, "records": merged})
        # Serialised in full before the atomic write, so a bad config value never leaves a partial file.
        atomic_write_bytes(path, json.dumps(document, indent=2, default=_json_default).encode("utf-8"))
    return path


def records_of(doc_or_records: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records of a results document, or the given list of records itself (as a new list)."""
    if isinstance(doc_or_records, Mapping):
        return list(doc_or_records.get("records", []))
    return list(doc_or_records)


def records_frame(doc_or_records: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> "pandas.DataFrame":
    """Records as a pandas DataFrame (one row per record, ``latency_median_ms`` flattened out).

    Args:
        doc_or_records: a results document or a list of records.

    Returns:
        A DataFrame with the ``RECORD_FIELDS`` columns plus ``latency_median_ms``.
    """
    import pandas as pd  # installed with seaborn; imported lazily so the kit loads without it

    records = records_of(doc_or_records)
    frame = pd.DataFrame([{field: record.get(field) for field in RECORD_FIELDS} for record in records],
                         columns=list(RECORD_FIELDS))
    frame["latency_median_ms"] = [(record.get("latency_ms") or {}).get("median") for record in records]
    return frame
