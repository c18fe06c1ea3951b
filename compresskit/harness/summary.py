"""``summary.md``: every record of a results document as a Markdown table, then the lessons' targets checked.

Written by ``compresskit reproduce`` beside ``results.json`` and drawn from it alone, so the summary of the
committed reference is regenerated with ``compresskit reproduce --skip-run --out reports``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from compresskit.data.files import atomic_write_bytes
from compresskit.harness.combined import captured_errata, stages_markdown
from compresskit.harness.errata import errata_markdown, errata_rows
from compresskit.harness.targets import MEASURES, TARGETS, Target, check_targets, format_value
from compresskit.report import environment_caption, format_markdown_table, records_of

SUMMARY_NAME = "summary.md"
SUMMARY_COLUMNS = ("study", "label", "technique", "runtime", "map", "macs", "size_bytes", "speedup", "baseline")


def format_targets(document: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                   targets: Sequence[Target] = TARGETS) -> str:
    """The targets as a Markdown table: what each asks, the deciding record and value, and the verdict."""
    lines = ["| target | what it asks | deciding record | measured | verdict |", "|---|---|---|---:|---|"]
    for verdict in check_targets(document, targets):
        unit = MEASURES[verdict.target.measure].unit
        measured = "-" if verdict.value is None else format_value(verdict.value, unit)
        status = verdict.text()
        if verdict.status == "missed":
            status = f"**{status}**"
        lines.append(f"| {verdict.target.id} | {verdict.target.description} | {verdict.record or '-'} | {measured} "
                     f"| {status} |")
    return "\n".join(lines)


def format_summary(document: Mapping[str, Any]) -> str:
    """The whole ``summary.md`` of a results document (Markdown)."""
    records = records_of(document)
    caption = environment_caption(document.get("environment")) if isinstance(document, Mapping) else None
    parts = ["# Results summary", "",
             f"{len(records)} records. mAP is COCOeval's mAP@[.5:.95] x100; MACs in G and sizes in MB of the artifact "
             "a user would ship; speed-ups are paired (interleaved runs) against the record named as baseline, "
             "measured in the same run, with their interval.",
             *(["", f"Measured on: {caption}."] if caption else []),
             "", "## Records", "", format_markdown_table(records, SUMMARY_COLUMNS),
             "", "## Targets", "",
             "Each target is computed against each record's own baseline; with several records the worst decides "
             "(for `backbone-speed`, the best of those within the mAP budget). *not measured*: the records are not "
             "in this file.", "", format_targets(document)]
    stages = stages_markdown(document)
    if stages:
        parts += ["", "## Combined pipeline", "",
                  "Each stage against the fp32 teacher in ONNX Runtime, measured in the same run (lesson 06).", "",
                  stages]
    captured = captured_errata(document)
    if captured:
        parts += ["", "## The article's snippets, run", "",
                  "What each snippet did on the libraries of this run (captured as it ran), what to do instead, and "
                  "the measured effect of the fix, from the records above.", "",
                  errata_markdown(errata_rows(captured, document))]
    return "\n".join(parts) + "\n"


def write_summary(document: Mapping[str, Any], out_dir: Path | str) -> Path:
    """Write ``out_dir/summary.md`` (atomically) from a results document; returns its path."""
    return atomic_write_bytes(Path(out_dir) / SUMMARY_NAME, format_summary(document).encode("utf-8"))
