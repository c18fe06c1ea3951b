"""``summary.md``: every record of a results document as a Markdown table, then the lessons' targets checked, the
combined pipeline's stages and the article's snippets with the measured effect of each fix (:func:`errata_rows`).

Written by ``compresskit reproduce`` beside ``results.json`` and drawn from it alone, so the summary of the
committed reference is regenerated with ``compresskit reproduce --skip-run --out reports``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from compresskit.data.files import atomic_write_bytes
from compresskit.harness.combined import captured_errata, stages_markdown
from compresskit.harness.errata import SNIPPETS
from compresskit.harness.targets import MEASURES, TARGETS, Target, check_target, check_targets, format_value
from compresskit.report import compare, environment_caption, format_markdown_table, records_of

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


def _effect(kind: str, record: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    if record.get("baseline") == baseline["id"]:
        ratios = compare(record, baseline)
    else:  # two records of one study compared on what needs no pairing (the timings were paired elsewhere)
        ratios = {"size_ratio": baseline["size_bytes"] / record["size_bytes"],
                  "macs_ratio": baseline["macs"] / record["macs"], "latency_speedup": None,
                  "map_drop_points": None if None in (record.get("map"), baseline.get("map"))
                  else 100 * (baseline["map"] - record["map"])}
    speed = ratios["latency_speedup"]
    drop = ratios["map_drop_points"]
    parts = []
    if kind in ("prune", "int8"):
        parts.append(f"{ratios['size_ratio']:.1f}x smaller")
        if kind == "prune":
            parts.append(f"{ratios['macs_ratio']:.1f}x fewer MACs")
        if speed is not None:
            parts.append(f"{speed:.2f}x faster")
        if drop is not None:
            parts.append(f"{drop:.1f} mAP points lost" if drop > 0 else f"{-drop:.1f} mAP points gained")
    elif drop is not None:
        parts.append(f"{-drop:+.1f} mAP points against the same design trained without distillation")
    return ", ".join(parts) + f" ({record['id']} vs {baseline['id']})"


def errata_rows(captured: Mapping[str, str], document: Any,
                backbone_effect: Callable[[Any], str | None] | None = None) -> list[dict[str, str]]:
    """One row per snippet: ``snippet``, ``what happens`` (``captured``), ``instead`` and ``measured effect`` of
    the fix, from the first evidence pair present in ``document`` ("not measured in these records" otherwise).
    ``backbone_effect`` turns the document into the backbone row's effect (default: the fastest backbone within
    the lesson's accuracy gap, from the backbone study's records)."""
    by_id = {record["id"]: record for record in records_of(document)}
    rows = []
    for snippet in SNIPPETS:
        effect = None
        for candidate, baseline in snippet.evidence:
            if candidate in by_id and baseline in by_id:
                effect = _effect(snippet.effect, by_id[candidate], by_id[baseline])
                break
        if snippet.effect == "backbone":
            effect = (backbone_effect or _backbone_effect)(document)
        rows.append({"snippet": snippet.code, "what happens": captured.get(snippet.key, "not run"),
                     "instead": snippet.instead, "measured effect": effect or "not measured in these records"})
    return rows


def _backbone_effect(document: Any) -> str | None:
    """The best torchvision backbone of lesson 05 (trained through the weights= API) against the teacher."""
    target = next(target for target in TARGETS if target.id == "backbone-speed")
    verdict = check_target(target, document)
    if verdict.record is None:
        return None
    return f"lesson 05 builds seven trunks through this API (trained from random weights offline); the fastest " \
           f"within {target.max_map_drop:g} mAP points of the teacher, {verdict.record}, is {verdict.value:.2f}x " \
           f"faster in ONNX Runtime fp32 (target {target.threshold:g}x: {verdict.text()})"


def errata_markdown(rows: Sequence[Mapping[str, str]]) -> str:
    """The rows as a Markdown table (the captured text on one line per cell, its pipes escaped)."""
    header = ["snippet", "what happens", "instead", "measured effect"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [" ".join(str(row[key]).split()).replace("|", "\\|") for key in header]  # one line per cell
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
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
