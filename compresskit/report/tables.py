"""Tables of results records: fixed-width text for a terminal or a notebook's output, Markdown for a summary.md.

Every header says its unit (mAP x100 as COCO papers print it, params in millions, MACs in G, sizes in MB,
latency in ms). A timing that should not be trusted is marked ``~``, an mAP not measured on the whole val split
``s`` (a slice) or ``t`` (a training record), each explained in a legend under the table.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from compresskit import measure
from compresskit.errors import CompressKitError
from compresskit.report.comparisons import latency_noisy
from compresskit.report.records import records_of

NOISE_MARK = "~"
NOISE_LEGEND = (f"{NOISE_MARK} noisy: p90/median > {measure.NOISY_P90_OVER_MEDIAN:g} or a wide paired interval; "
                f"rerun on an idle machine")
# Where an mAP comes from, when not from the whole val split: marked in the mAP columns, explained under the table.
SLICE_MARK, TRAINING_MARK = "s", "t"
MARK_LEGENDS = {
    NOISE_MARK: NOISE_LEGEND,
    SLICE_MARK: f"{SLICE_MARK} mAP on a slice of the val split (the record's config.map_source says which images); "
                "compare it only with mAPs on the same slice",
    TRAINING_MARK: f"{TRAINING_MARK} mAP from the training run's record (whole val split; the checkpoint is not "
                   "shipped, so it was not evaluated again)",
}


def map_source_mark(record: Mapping[str, Any]) -> str | None:
    """The table mark of where a record's mAP comes from: a val slice, a training record, or None (the whole val
    split, or a record that does not say)."""
    source = str(_nested(record, "config", "map_source") or "")
    if source.startswith("val slice"):
        return SLICE_MARK
    if source.startswith("training record"):
        return TRAINING_MARK
    return None


class Column(NamedTuple):
    """One table column: its header (with the unit), alignment, cell text and, optionally, a noise flag and a
    mark (one of ``MARK_LEGENDS``) that a cell carries after its text."""

    header: str
    right: bool
    cell: Callable[[Mapping[str, Any]], str]
    noisy: Callable[[Mapping[str, Any]], bool | None] | None = None
    mark: Callable[[Mapping[str, Any]], str | None] | None = None


def _nested(record: Mapping[str, Any], *keys: str) -> Any:
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _scaled(key: str, factor: float, decimals: int) -> Callable[[Mapping[str, Any]], str]:
    def cell(record: Mapping[str, Any]) -> str:
        value = _nested(record, *key.split("."))
        return "-" if value is None else f"{value * factor:.{decimals}f}"
    return cell


def short_label(record_id: str) -> str:
    """A record id without its study prefix, e.g. ``"teacher/ort-int8"`` for ``"quantization/teacher/ort-int8"``;
    an id of one part is returned as it is."""
    _, sep, rest = record_id.partition("/")
    return rest if sep and rest else record_id


def _study(record: Mapping[str, Any]) -> str:
    study, sep, _ = str(record.get("id", "")).partition("/")
    return study if sep else "-"


def _text(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda record: "-" if record.get(key) in (None, "") else str(record[key])


def _speedup(record: Mapping[str, Any]) -> str:
    paired = record.get("paired_latency")
    if not paired:
        return "-"
    low, high = paired["interval"]
    return f"{paired['speedup']:.2f}x [{low:.2f}-{high:.2f}]"


def _paired_noisy(record: Mapping[str, Any]) -> bool:
    return bool((record.get("paired_latency") or {}).get("noisy"))


TABLE_COLUMNS: dict[str, Column] = {
    "id": Column("id", False, _text("id")),
    "study": Column("study", False, _study),
    "label": Column("label", False, lambda record: short_label(str(record.get("id", "")))),
    "model": Column("model", False, _text("model")),
    "technique": Column("technique", False, _text("technique")),
    "runtime": Column("runtime", False, _text("runtime")),
    "variant": Column("variant", False, _text("variant")),
    "map": Column("mAP x100", True, _scaled("map", 100, 1), mark=map_source_mark),
    "map50": Column("mAP50 x100", True, _scaled("map50", 100, 1), mark=map_source_mark),
    "map75": Column("mAP75 x100", True, _scaled("map75", 100, 1), mark=map_source_mark),
    "params": Column("params M", True, _scaled("params", 1e-6, 2)),
    "nonzero_params": Column("nonzero M", True, _scaled("nonzero_params", 1e-6, 2)),
    "macs": Column("MACs G", True, _scaled("macs", 1e-9, 2)),
    "size_bytes": Column("size MB", True, _scaled("size_bytes", 1e-6, 2)),
    "size_gzip_bytes": Column("gzip MB", True, _scaled("size_gzip_bytes", 1e-6, 2)),
    "latency": Column("latency ms", True, _scaled("latency_ms.median", 1, 2), latency_noisy),
    "speedup": Column("speedup", True, _speedup, _paired_noisy),
    "baseline": Column("baseline", False, _text("baseline")),
}
DEFAULT_COLUMNS = ("id", "technique", "runtime", "map", "params", "nonzero_params", "macs", "size_bytes",
                   "size_gzip_bytes", "latency", "speedup")


def _cell_mark(column: Column, record: Mapping[str, Any]) -> str | None:
    if column.noisy is not None and column.noisy(record):
        return NOISE_MARK
    return column.mark(record) if column.mark is not None and column.cell(record) != "-" else None


def _column_cells(column: Column, records: Sequence[Mapping[str, Any]]) -> list[str]:
    texts = [column.cell(record) for record in records]
    marks = [_cell_mark(column, record) for record in records]
    if not any(marks):
        return texts
    # Unmarked cells get the same width of padding, so right-aligned numbers stay aligned on their digits.
    return [f"{text} {mark}" if mark else f"{text}  " for text, mark in zip(texts, marks)]


def _specs(columns: Sequence[str]) -> list[Column]:
    unknown = [name for name in columns if name not in TABLE_COLUMNS]
    if unknown:
        raise CompressKitError(f"unknown table columns {unknown}; choose from {', '.join(TABLE_COLUMNS)}")
    return [TABLE_COLUMNS[name] for name in columns]


def _legends(specs: Sequence[Column], by_column: Sequence[Sequence[str]]) -> list[str]:
    """One legend line per mark the table shows, in ``MARK_LEGENDS`` order."""
    used = {text.rsplit(" ", 1)[-1] for spec, cells in zip(specs, by_column) if spec.noisy or spec.mark
            for text in cells if " " in text}
    return [legend for mark, legend in MARK_LEGENDS.items() if mark in used]


def format_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A fixed-width text table of results records.

    Args:
        records: results records (see :mod:`compresskit.report.records`); missing values show as ``-``.
        columns: names from ``TABLE_COLUMNS``: mAP x100 with 1 decimal, params in millions, MACs in G, sizes in
            MB, latency as the median in ms, speedup as the paired ``1.93x [low-high]`` against the baseline.

    Returns:
        The table as one string, header and rule first; a legend line last for each mark shown (a noisy timing,
        an mAP on a val slice or from a training record).
    """
    specs = _specs(columns)
    by_column = [_column_cells(spec, records) for spec in specs]
    rows = [list(row) for row in zip(*by_column)] if by_column else []
    widths = [max([len(spec.header)] + [len(text) for text in cells]) for spec, cells in zip(specs, by_column)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(text.rjust(width) if spec.right else text.ljust(width)
                         for text, width, spec in zip(cells, widths, specs)).rstrip()

    header = line([spec.header for spec in specs])
    lines = [header, "-" * len(header)] + [line(row) for row in rows]
    return "\n".join(lines + _legends(specs, by_column))


def format_markdown_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """The same table as :func:`format_table` in Markdown (a ``summary.md``, a README): one row per record.

    Args:
        records: results records; missing values show as ``-``.
        columns: names from ``TABLE_COLUMNS``.

    Returns:
        The Markdown table; after a blank line, a legend line for each mark shown.
    """
    specs = _specs(columns)
    by_column = [_column_cells(spec, records) for spec in specs]
    # A '|' inside a cell would end it early.
    rows = [[text.strip().replace("|", "\\|") for text in row] for row in zip(*by_column)] if by_column else []
    lines = ["| " + " | ".join(spec.header for spec in specs) + " |",
             "|" + "|".join("---:" if spec.right else "---" for spec in specs) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    legends = _legends(specs, by_column)
    return "\n".join(lines + ([""] + legends if legends else []))


def format_records_table(records: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                         columns: Sequence[str] | None = None) -> str:
    """Fixed-width text table of a results document or a list of records (see :func:`format_table`).

    Args:
        records: a results document or a list of records.
        columns: column names from ``TABLE_COLUMNS``; ``DEFAULT_COLUMNS`` when None.

    Returns:
        The table as a string.
    """
    return format_table(records_of(records), columns=columns or DEFAULT_COLUMNS)
