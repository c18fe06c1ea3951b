"""The lessons' targets, checked from results records: each one met, missed (by how much) or not measured.

One small table (:data:`TARGETS`) says, for each target, which records it reads (id patterns plus field values),
what is computed against each record's own baseline (:data:`MEASURES`) and the threshold. This module owns every
threshold: a study or figure that marks or draws a target imports its constant from here, so the module reads
only results records and imports no study. ``reproduce`` writes the verdicts into ``summary.md``; a lesson can
call :func:`check_targets` on its own records.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from compresskit.measure.environment import VNNI_FLAGS
from compresskit.report import compare, records_of

# Every threshold of the lessons lives in :data:`TARGETS`; the ones a study or a figure also needs (to mark a row
# or draw a target line) are named here, and those modules import them from here.
BACKBONE_SPEEDUP = 3.0  # ONNX Runtime fp32, against the teacher's ONNX Runtime fp32 core (paired)
BACKBONE_MAP_GAP = 0.05  # at most 5 mAP points below the teacher (mAP in 0-1, as records hold it)
COMBINED_SIZE_RATIO = 10.0  # prune -> distil -> int8 teacher against the fp32 teacher of the same run
COMBINED_SPEEDUP = 4.0
COMBINED_MAP_DROP = 2.0  # mAP points
# The budget of the pipelines' automatic int8 stage: the fastest int8 runtime whose mAP is at most this many points
# below the fp32 teacher's (harness.combined); tighter than COMBINED_MAP_DROP, which the whole pipeline is held to.
COMBINED_INT8_BUDGET = 1.0
COMBINED_RECORD = "combined/teacher/prune-kd-int8"  # the record the combined targets read (harness.combined)
SEARCH_RECORDS = ("search/teacher/t*",)  # the teacher search's variants (harness.search), each against the yardstick
SEARCH_FP32_RECORDS = ("search/teacher/t*/ort-fp32",)  # its pruned, fine-tuned fp32 cores: pruning without int8

_SLACK = 1e-9  # a value exactly at the threshold meets it despite float rounding


class Measure(NamedTuple):
    """What a target computes from a record and its baseline, whether higher is better, and its unit."""

    value: Callable[[Mapping[str, Any], Mapping[str, Any]], float | None]
    at_least: bool
    unit: str


def _paired_speedup(record: Mapping[str, Any], baseline: Mapping[str, Any]) -> float | None:
    comparison = compare(record, baseline)
    # Only a paired (interleaved) speed-up counts: sequential medians drift on a busy machine (docs/method.md,
    # "Measurement").
    return comparison["latency_speedup"] if comparison["latency_interval"] is not None else None


def _map_gain(record: Mapping[str, Any], baseline: Mapping[str, Any]) -> float | None:
    drop = compare(record, baseline)["map_drop_points"]
    return None if drop is None else -drop


MEASURES: dict[str, Measure] = {
    "map_drop_points": Measure(lambda record, baseline: compare(record, baseline)["map_drop_points"], False, "points"),
    "map_gain_points": Measure(_map_gain, True, "points"),
    "paired_speedup": Measure(_paired_speedup, True, "x"),
    "size_ratio": Measure(lambda record, baseline: compare(record, baseline)["size_ratio"], True, "x"),
    "macs_ratio": Measure(lambda record, baseline: compare(record, baseline)["macs_ratio"], True, "x"),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of the lessons.

    ``records``: id patterns (``fnmatch``, ``*`` matches ``/`` too) and ``where``: field values a record must also
    have. ``measure`` (a :data:`MEASURES` key) is computed against each record's own baseline. By default every
    matched record must meet ``threshold`` and the worst decides; ``any_record``: one suffices and the best
    decides. ``max_map_drop``: only records at most this many mAP points below their baseline count. ``cpu``:
    ``vnni`` (int8 dot-product instructions: AVX-512 VNNI, AVX-VNNI or AMX) or ``avx2-only``: the target holds for
    that kind of CPU only, and a run on the other kind leaves it not measured.
    """

    id: str
    description: str
    records: tuple[str, ...]
    measure: str
    threshold: float
    where: tuple[tuple[str, str], ...] = ()
    any_record: bool = False
    max_map_drop: float | None = None
    cpu: str | None = None


TARGETS: tuple[Target, ...] = (
    Target("pruning-accuracy", "structured-pruned teacher at most 2.0 mAP points below the teacher",
           ("pruning/teacher/structured-*",), "map_drop_points", 2.0, where=(("technique", "structured_pruning"),)),
    Target("pruning-speed", "structured-pruned teacher at least 1.5x faster (paired, same runtime)",
           ("pruning/teacher/structured-*",), "paired_speedup", 1.5, where=(("technique", "structured_pruning"),)),
    Target("int8-size", "teacher's int8 file at least 3.8x smaller than its fp32 file",
           ("quantization/teacher/ort-int8",), "size_ratio", 3.8),
    Target("int8-accuracy", "int8 at most 1.0 mAP point below fp32 (teacher, pruned teacher, student)",
           ("quantization/teacher/ort-int8", "quantization/teacher_pruned/ort-int8", "quantization/student/ort-int8"),
           "map_drop_points", 1.0),
    Target("int8-speed-teacher", "teacher's int8 core at least 3.0x faster than fp32 (paired, ONNX Runtime)",
           ("quantization/teacher/ort-int8",), "paired_speedup", 3.0),
    Target("int8-speed-student", "student's int8 core at least 2.0x faster than fp32 (paired, ONNX Runtime)",
           ("quantization/student/ort-int8",), "paired_speedup", 2.0),
    Target("int8-speed-pruned", "pruned teacher's int8 core at least 2.0x faster than fp32 (paired, ONNX Runtime)",
           ("quantization/teacher_pruned/ort-int8",), "paired_speedup", 2.0),
    Target("kd-gain", "logit + feature KD student at least 2.0 mAP points above its no-KD control",
           ("*",), "map_gain_points", 2.0, where=(("technique", "kd"), ("model", "student"))),
    Target("pruned-kd-accuracy", "pruned teacher recovered with KD at most 1.0 mAP point below the teacher",
           ("distill/teacher-pruned-kd/*",), "map_drop_points", 1.0),
    Target("backbone-speed", f"a backbone at least {BACKBONE_SPEEDUP:g}x faster than the teacher (ONNX Runtime "
                             f"fp32, paired) within {100 * BACKBONE_MAP_GAP:g} mAP points of it",
           ("backbones/*/ort-fp32",), "paired_speedup", BACKBONE_SPEEDUP, where=(("technique", "backbone"),),
           any_record=True, max_map_drop=100 * BACKBONE_MAP_GAP),
    Target("qat-accuracy", "QAT at most 0.5 mAP point below fp32", ("*",), "map_drop_points", 0.5,
           where=(("technique", "qat"),)),
    Target("combined-size", f"prune -> distil -> int8 teacher at least {COMBINED_SIZE_RATIO:g}x smaller than the "
                            "fp32 teacher", (COMBINED_RECORD,), "size_ratio", COMBINED_SIZE_RATIO),
    Target("combined-speed", f"prune -> distil -> int8 teacher at least {COMBINED_SPEEDUP:g}x faster than the "
                             "fp32 teacher in ONNX Runtime (paired)", (COMBINED_RECORD,), "paired_speedup",
           COMBINED_SPEEDUP),
    Target("combined-accuracy", f"prune -> distil -> int8 teacher at most {COMBINED_MAP_DROP:g} mAP points below "
                                "the fp32 teacher", (COMBINED_RECORD,), "map_drop_points", COMBINED_MAP_DROP),
    Target("search-speed-vnni", "search: a teacher variant within 1.0 mAP point at least 5.0x faster than the fp32 "
                                "teacher in ONNX Runtime (paired), on a CPU with VNNI or AMX", SEARCH_RECORDS,
           "paired_speedup", 5.0, any_record=True, max_map_drop=1.0, cpu="vnni"),
    Target("search-speed-avx2", "search: a teacher variant within 1.0 mAP point at least 4.0x faster than the fp32 "
                                "teacher in ONNX Runtime (paired), on an AVX2-only CPU", SEARCH_RECORDS,
           "paired_speedup", 4.0, any_record=True, max_map_drop=1.0, cpu="avx2-only"),
    Target("search-speed-half-point-vnni", "search: a teacher variant within 0.5 mAP point at least 3.5x faster "
                                           "(paired), on a CPU with VNNI or AMX", SEARCH_RECORDS, "paired_speedup",
           3.5, any_record=True, max_map_drop=0.5, cpu="vnni"),
    Target("search-speed-half-point-avx2", "search: a teacher variant within 0.5 mAP point at least 2.8x faster "
                                           "(paired), on an AVX2-only CPU", SEARCH_RECORDS, "paired_speedup", 2.8,
           any_record=True, max_map_drop=0.5, cpu="avx2-only"),
    Target("search-size", "search: a teacher variant within 1.0 mAP point at least 12x smaller than the fp32 "
                          "teacher", SEARCH_RECORDS, "size_ratio", 12.0, any_record=True, max_map_drop=1.0),
    Target("search-pruning-macs", "search: structured pruning alone (fp32) within 1.0 mAP point with at least 2x "
                                  "fewer MACs", SEARCH_FP32_RECORDS, "macs_ratio", 2.0, any_record=True,
           max_map_drop=1.0),
    Target("search-pruning-speed", "search: structured pruning alone (fp32) within 1.0 mAP point at least 1.7x "
                                   "faster (paired)", SEARCH_FP32_RECORDS, "paired_speedup", 1.7, any_record=True,
           max_map_drop=1.0),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A target checked: ``status`` is ``met``, ``missed`` or ``not measured``; ``value`` and ``record`` are the
    deciding measurement (None when not measured); ``shortfall`` how far it is from the threshold when missed."""

    target: Target
    status: str
    value: float | None = None
    record: str | None = None
    shortfall: float | None = None
    note: str = ""

    def text(self) -> str:
        """``met``, ``missed by 0.15 points``, ``missed by 0.96x``, ``not measured`` (plus a note, if any)."""
        unit = MEASURES[self.target.measure].unit
        words = self.status
        if self.status == "missed" and self.shortfall is not None:
            words = f"missed by {format_value(self.shortfall, unit)}"
        return f"{words} ({self.note})" if self.note else words


def format_value(value: float, unit: str) -> str:
    """``2.15 points`` or ``2.06x``."""
    return f"{value:.2f}x" if unit == "x" else f"{value:.2f} {unit}"


def _matches(target: Target, record: Mapping[str, Any]) -> bool:
    return (any(fnmatch.fnmatchcase(str(record.get("id")), pattern) for pattern in target.records)
            and all(record.get(field) == value for field, value in target.where))


def _measured(target: Target, records: Sequence[Mapping[str, Any]]) -> list[tuple[float, str, bool]]:
    """``(value, record id, counts)`` for each matched record whose baseline is present and measured."""
    by_id = {record["id"]: record for record in records}
    measured = []
    for record in records:
        baseline = by_id.get(record.get("baseline") or "")
        if baseline is None or not _matches(target, record):
            continue
        value = MEASURES[target.measure].value(record, baseline)
        if value is None:
            continue
        drop = compare(record, baseline)["map_drop_points"]
        counts = target.max_map_drop is None or (drop is not None and drop <= target.max_map_drop + _SLACK)
        measured.append((value, record["id"], counts))
    return measured


def cpu_kind(document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str | None:
    """``vnni`` or ``avx2-only`` from a results document's environment stamp (None: a bare list of records, or no
    stamp)."""
    environment = document.get("environment") if isinstance(document, Mapping) else None
    isa = set((environment or {}).get("isa") or ())
    if not isa:
        return None
    return "vnni" if isa & set(VNNI_FLAGS) else "avx2-only"  # int8 speed depends on these (docs/method.md)


def check_target(target: Target, document: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Verdict:
    """Check one target on a results document (or a list of records).

    Returns:
        The :class:`Verdict`: ``not measured`` when no matched record has its baseline and value; otherwise the
        worst matched record (the best one with ``any_record``) decides.
    """
    kind = cpu_kind(document)
    if target.cpu is not None and kind is not None and kind != target.cpu:
        measured_on = "a CPU with VNNI or AMX" if kind == "vnni" else "an AVX2-only CPU"
        return Verdict(target, "not measured", note=f"this run was on {measured_on}")
    measured = _measured(target, records_of(document))
    if not measured:
        return Verdict(target, "not measured")
    eligible = [(value, record_id) for value, record_id, counts in measured if counts]
    if not eligible:
        return Verdict(target, "missed", note=f"no record within {target.max_map_drop:g} mAP points")
    at_least = MEASURES[target.measure].at_least
    prefer_high = at_least == target.any_record  # at-least targets: the best is the highest, the worst the lowest
    value, record_id = (max if prefer_high else min)(eligible, key=lambda entry: entry[0])  # ties: the first record
    shortfall = target.threshold - value if at_least else value - target.threshold
    if shortfall <= _SLACK:
        return Verdict(target, "met", value=value, record=record_id)
    return Verdict(target, "missed", value=value, record=record_id, shortfall=shortfall)


def check_targets(document: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                  targets: Sequence[Target] = TARGETS) -> list[Verdict]:
    """Every target (default :data:`TARGETS`) checked on a results document: one :class:`Verdict` each."""
    return [check_target(target, document) for target in targets]
