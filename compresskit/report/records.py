"""Results records (DESIGN §5, a contract): build, read, merge-write atomically, compare, tabulate.

Every measured variant becomes one record keyed by ``id``; a rerun replaces its own records and never
touches others. Ratios are only ever computed against the record named by ``baseline``, which must be
measured in the same run. Introduced in ``01_baseline.ipynb``.
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
from compresskit.errors import CompressKitError

if TYPE_CHECKING:  # heavy optional imports, only for annotations
    import pandas

SCHEMA = 1
RESULTS_NAME = "results.json"
RECORD_FIELDS = (
    "id", "lesson", "profile", "technique", "variant", "model", "baseline", "runtime",
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "params", "nonzero_params", "macs", "size_bytes", "size_gzip_bytes", "latency_ms", "train_seconds", "config",
)
METRIC_KEYS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
LATENCY_KEYS = ("median", "p90", "runs", "batch", "threads", "input")
TECHNIQUES = (
    "baseline", "unstructured_pruning", "structured_pruning", "dynamic_quant", "fp16", "static_ptq", "qat",
    "logit_kd", "feature_kd", "kd", "backbone", "combined",
)
RUNTIMES = ("torch-eager", "torch-compile", "onnxruntime")


class ResultsFileError(CompressKitError, ValueError):
    """A results file or record breaks the DESIGN §5 contract; the message names the file and the fix."""


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


def make_record(*, id: str, lesson: str, technique: str, model: str, runtime: str,
                metrics: Mapping[str, Any] | None, variant: str = "", baseline: str | None = None,
                profile: str | None = None, params: int | None = None, nonzero_params: int | None = None,
                macs: int | None = None, size: measure.SizeInfo | Sequence[int] | None = None,
                latency: Mapping[str, Any] | None = None, train_seconds: float | None = None,
                config: Any = None) -> dict[str, Any]:
    """Build one validated results record with exactly the DESIGN §5 fields.

    Args:
        id: unique key, e.g. ``"quantization/teacher/ort-int8"``; a rerun with the same id replaces it.
        lesson: the notebook or command that produced it, e.g. ``"03_quantization"``.
        technique: one of ``TECHNIQUES``.
        model: the preset measured (``teacher``, ``student``, a backbone name...).
        runtime: one of ``RUNTIMES``.
        metrics: ``engine.evaluate``'s dict (COCOeval values in 0-1); ``map*`` keys are copied, others ignored.
        variant: free text saying what exactly was done.
        baseline: id of the record this one is compared against (measured in the same run), or None.
        profile: data profile; defaults to ``settings.profile()``.
        params, nonzero_params, macs: from :mod:`compresskit.measure`.
        size: ``SizeInfo`` or ``(bytes, gzip_bytes)``.
        latency: ``Latency.as_record(input_hw)``.
        train_seconds: wall time spent training/fine-tuning this variant, if any.
        config: settings that reproduce the variant (a mapping or a dataclass; values JSON-serialisable).

    Returns:
        The record as a plain dict.
    """
    if not isinstance(id, str) or not id:
        raise ValueError(f"record id must be a non-empty string, got {id!r}")
    if technique not in TECHNIQUES:
        raise ValueError(f"unknown technique {technique!r} for record {id!r}; use one of {', '.join(TECHNIQUES)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} for record {id!r}; use one of {', '.join(RUNTIMES)}")
    if baseline is not None and (not isinstance(baseline, str) or not baseline):
        raise ValueError(f"baseline of record {id!r} must be a record id (string) or None, got {baseline!r}")
    if baseline == id:
        raise ValueError(f"record {id!r} cannot be its own baseline")
    if latency is not None:
        missing = [key for key in LATENCY_KEYS if key not in latency]
        if missing:
            raise ValueError(f"latency of record {id!r} lacks {missing}; pass Latency.as_record(input_hw)")
        latency = dict(latency)
    size_bytes, size_gzip = (None, None) if size is None else (int(size[0]), int(size[1]))
    metrics = metrics or {}
    record: dict[str, Any] = {
        "id": id, "lesson": lesson, "profile": profile or settings.profile(), "technique": technique,
        "variant": variant, "model": model, "baseline": baseline, "runtime": runtime,
    }
    record.update({key: _optional_float(metrics.get(key)) for key in METRIC_KEYS})
    record.update({
        "params": _optional_int(params), "nonzero_params": _optional_int(nonzero_params),
        "macs": _optional_int(macs), "size_bytes": size_bytes, "size_gzip_bytes": size_gzip,
        "latency_ms": latency, "train_seconds": _optional_float(train_seconds),
        "config": _config_dict(config),
    })
    return record


def _check_record(record: Mapping[str, Any]) -> None:
    """The checks of :func:`make_record`, for records built by hand or read back."""
    missing = [field for field in RECORD_FIELDS if field not in record]
    if missing:
        raise ValueError(f"record {record.get('id')!r} lacks fields {missing}; build it with make_record()")
    make_record(**{key: record[key] for key in ("id", "lesson", "technique", "model", "runtime", "baseline")},
                metrics=None, profile="-", latency=record["latency_ms"])


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
    return document


@contextlib.contextmanager
def _locked(results_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the results file so concurrent writers do not lose records."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; writes stay atomic, only concurrent merges are unprotected
        yield
        return
    results_path.parent.mkdir(parents=True, exist_ok=True)
    # A separate lock file because the results file itself is replaced by rename on every write.
    with open(results_path.with_name(results_path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


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
        ValueError: a record is invalid, or its ``baseline`` is neither in this batch nor in the file.
        ResultsFileError: the existing file is corrupt (it is left untouched).
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
            raise ValueError(f"baseline records not found in this batch nor in {path}: {orphans}; "
                             f"measure the baseline in the same run and write it with these records")
        merged = [batch.pop(record["id"], record) for record in document["records"]]
        merged.extend(batch.values())
        document.update({"schema": SCHEMA, "environment": stamp, "records": merged})
        # Serialised in full before the atomic write, so a bad config value never leaves a partial file.
        atomic_write_bytes(path, json.dumps(document, indent=2, default=_json_default).encode("utf-8"))
    return path


def records_of(doc_or_records: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
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


# --------------------------------------------------------------------------------------------- comparisons
def _ratio(numerator: Any, denominator: Any) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return float(numerator) / float(denominator)


def latency_median(record: Mapping[str, Any]) -> float | None:
    return (record.get("latency_ms") or {}).get("median")


def compare(record: Mapping[str, Any], baseline_record: Mapping[str, Any]) -> dict[str, float | None]:
    """What ``record`` buys and costs against its baseline (None where a value is missing).

    Args:
        record: the compressed variant.
        baseline_record: the record named by ``record["baseline"]`` (if that is set, ids must match).

    Returns:
        ``size_ratio`` and ``gzip_size_ratio`` (baseline bytes / record bytes, >1 means smaller),
        ``macs_ratio`` (baseline / record), ``latency_speedup`` (baseline median / record median) and
        ``map_drop_points`` ((baseline mAP - record mAP) x 100).
    """
    wanted = record.get("baseline")
    if wanted is not None and wanted != baseline_record.get("id"):
        raise ValueError(f"record {record.get('id')!r} is measured against {wanted!r}, "
                         f"not {baseline_record.get('id')!r}; compare it with its own baseline")
    map_drop = None
    if record.get("map") is not None and baseline_record.get("map") is not None:
        map_drop = (baseline_record["map"] - record["map"]) * 100.0
    return {
        "size_ratio": _ratio(baseline_record.get("size_bytes"), record.get("size_bytes")),
        "gzip_size_ratio": _ratio(baseline_record.get("size_gzip_bytes"), record.get("size_gzip_bytes")),
        "macs_ratio": _ratio(baseline_record.get("macs"), record.get("macs")),
        "latency_speedup": _ratio(latency_median(baseline_record), latency_median(record)),
        "map_drop_points": map_drop,
    }


def format_records_table(records: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                         columns: Sequence[str] | None = None) -> str:
    """Fixed-width text table of records (see :func:`compresskit.measure.format_table`).

    Args:
        records: a results document or a list of records.
        columns: column names from ``measure.TABLE_COLUMNS``; the defaults when None.

    Returns:
        The table as a string.
    """
    return measure.format_table(records_of(records), columns=columns or measure.DEFAULT_COLUMNS)
