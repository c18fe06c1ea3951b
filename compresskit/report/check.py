"""A run's results compared with the committed reference, record by record (``compresskit reproduce --check``).

What must reproduce on any machine: mAP (COCOeval on CPU is deterministic for one seed) within
``MAP_TOLERANCE``, the counts (params, non-zero params, MACs) exactly (non-zero params only where the weights are
the variant's own, not a stand-in for a checkpoint the package does not ship), and the shipped file's size within
``SIZE_TOLERANCE`` (serializers of other versions write a few bytes more or less). Latency belongs to the machine
and its load (docs/method.md, "Measurement"): its ratios are printed beside the reference's and never fail the check. So does the mAP
of an int8 record when one document comes from a CPU with VNNI and the other from one without: the two run
different int8 arithmetic (without VNNI, uint8 x int8 sums saturate, so the kit quantizes weights to 7 bits there),
so their accuracies are printed side by side instead of compared. A variant that a study *chose* by int8 accuracy
(the sensitivity scan's all-but-worst keeps the part whose int8 hurt most in float) can then be another variant
altogether: when its choice differs, it is listed with both choices and not compared at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from compresskit.engine.evaluation import METRIC_NAMES
from compresskit.measure.environment import has_vnni
from compresskit.report.records import records_of

MAP_TOLERANCE = 0.005  # absolute, on COCOeval's 0-1 scale (half a point of mAP x100)
SIZE_TOLERANCE = 0.01  # relative to the reference's size_bytes
EXACT_FIELDS = ("params", "nonzero_params", "macs")
# How a record says it was measured on stand-in weights (its checkpoint is not shipped): its mAP comes from the
# training record (Study.measure's map_source), or it was not evaluated at all (config "weights").
STAND_IN_SOURCE = "training record"
STAND_IN_WEIGHTS = "untrained stand-in"
INT8_TECHNIQUES = ("static_ptq", "qat")  # plus any record whose config names its int8 activation type
CHOSEN_BY_INT8_ACCURACY = ("float_parts",)  # config fields a study sets from int8 mAP it measured
_FLOAT_SLACK = 1e-9  # so that a difference of exactly the tolerance passes despite rounding


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One field of one record that is outside its tolerance (or measured on one side only)."""

    record: str
    field: str
    value: Any
    reference: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.record}: {self.field} {self.value} vs reference {self.reference} (allowed: {self.allowed})"


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """What :func:`check_against_reference` found.

    ``compared``: ids in both documents (same profile); ``mismatches``: each failing record and field;
    ``not_rerun``: reference ids this run did not produce (``--only`` runs a subset: not a failure); ``new``: ids
    only in this run; ``other_profile``: ids measured on another data profile than the reference's (not compared);
    ``speedups``: ``(id, this run's paired speed-up, the reference's)``, information only; ``int8_other_cpu``:
    ``(id, this run's mAP, the reference's)`` of int8 records whose mAP was not compared because one side's CPU
    has VNNI and the other's does not (information only); ``chosen_other_cpu``: ``(id, this run's choice, the
    reference's)`` of such records that are another variant on the two CPUs (see the module doc), not compared.
    """

    compared: list[str]
    mismatches: list[Mismatch]
    not_rerun: list[str]
    new: list[str]
    other_profile: list[str]
    speedups: list[tuple[str, float | None, float | None]]
    int8_other_cpu: list[tuple[str, float | None, float | None]] = dataclasses.field(default_factory=list)
    chosen_other_cpu: list[tuple[str, dict, dict]] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no compared record has a field outside its tolerance."""
        return not self.mismatches

    def format(self) -> str:
        """A plain-text report: the speed-ups side by side, the ids not compared, each mismatch, the verdict."""
        lines = [f"check against the reference: {len(self.compared)} records compared"]
        if self.speedups:
            lines.append("paired speed-ups, this run vs the reference (machine-dependent, never failing):")
            width = max(len(record_id) for record_id, _, _ in self.speedups)
            lines += [f"  {record_id:<{width}}  {_times(mine)} vs {_times(theirs)}"
                      for record_id, mine, theirs in self.speedups]
        if self.int8_other_cpu:
            lines.append("int8 mAP, not compared: one CPU has VNNI, the other not (different int8 arithmetic):")
            width = max(len(record_id) for record_id, _, _ in self.int8_other_cpu)
            lines += [f"  {record_id:<{width}}  {_map(mine)} vs {_map(theirs)}"
                      for record_id, mine, theirs in self.int8_other_cpu]
        if self.chosen_other_cpu:
            lines.append("another variant on the other CPU, chosen by its int8 accuracy (not compared):")
            lines += [f"  {record_id}: this run {mine}, the reference {theirs}"
                      for record_id, mine, theirs in self.chosen_other_cpu]
        for title, ids in (("not rerun (in the reference only, not a failure)", self.not_rerun),
                           ("new (not in the reference)", self.new),
                           ("measured on another profile than the reference (not compared)", self.other_profile)):
            if ids:
                lines.append(f"{title}: {len(ids)}: {', '.join(ids)}")
        # The verdict last, under the long lists, where a terminal leaves it in view.
        lines += [f"FAIL {mismatch}" for mismatch in self.mismatches]
        lines.append("check passed" if self.passed else
                     f"check FAILED: {len(self.mismatches)} field(s) outside the tolerances")
        return "\n".join(lines)


def _times(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"


def _map(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _has_vnni(document: Any) -> bool | None:
    """Whether a results document's CPU has an int8 dot product that cannot saturate (None: not recorded)."""
    environment = document.get("environment") if isinstance(document, Mapping) else None
    if not environment or environment.get("isa") is None:
        return None
    return has_vnni(environment["isa"])


def _int8(record: Mapping[str, Any]) -> bool:
    return record.get("technique") in INT8_TECHNIQUES or bool((record.get("config") or {}).get("activations"))


def _choice(record: Mapping[str, Any]) -> dict:
    config = record.get("config") or {}
    return {field: config.get(field) for field in CHOSEN_BY_INT8_ACCURACY if field in config}


def _one_sided(record_id: str, field: str, value: Any, reference: Any, allowed: str) -> Mismatch | None:
    """A mismatch when only one side has a value (both None: nothing measured, nothing to compare)."""
    if (value is None) == (reference is None):
        return None
    return Mismatch(record_id, field, value, reference, allowed)


def _stand_in(record: Mapping[str, Any]) -> bool:
    config = record.get("config") or {}
    return str(config.get("map_source", "")).startswith(STAND_IN_SOURCE) or config.get("weights") == STAND_IN_WEIGHTS


def _record_mismatches(mine: Mapping[str, Any], theirs: Mapping[str, Any],
                       compare_map: bool = True) -> list[Mismatch]:
    record_id = str(mine["id"])
    found: list[Mismatch] = []
    for field in METRIC_NAMES if compare_map else ():
        value, reference = mine.get(field), theirs.get(field)
        allowed = f"±{MAP_TOLERANCE:g} absolute"
        if value is None or reference is None:
            found.append(_one_sided(record_id, field, value, reference, allowed))
        elif abs(value - reference) > MAP_TOLERANCE + _FLOAT_SLACK:
            found.append(Mismatch(record_id, field, value, reference, allowed))
    for field in EXACT_FIELDS:
        if field == "nonzero_params" and (_stand_in(mine) or _stand_in(theirs)):
            continue  # zeros among freshly initialised stand-in weights say nothing about the trained variant
        if mine.get(field) != theirs.get(field):
            found.append(Mismatch(record_id, field, mine.get(field), theirs.get(field), "exact"))
    value, reference = mine.get("size_bytes"), theirs.get("size_bytes")
    allowed = f"±{SIZE_TOLERANCE:.0%}"
    if value is None or reference is None:
        found.append(_one_sided(record_id, "size_bytes", value, reference, allowed))
    elif abs(value - reference) > SIZE_TOLERANCE * reference + _FLOAT_SLACK:
        found.append(Mismatch(record_id, "size_bytes", value, reference, allowed))
    return [mismatch for mismatch in found if mismatch is not None]


def _paired_speedup(record: Mapping[str, Any]) -> float | None:
    return (record.get("paired_latency") or {}).get("speedup")


def check_against_reference(results: Mapping[str, Any], reference: Mapping[str, Any]) -> CheckOutcome:
    """Compare a run's results document with the reference document, record by record, for ids in both.

    Args:
        results: the run's document (``read_results``), or a list of its records.
        reference: the committed reference document, or a list of its records.

    Returns:
        The :class:`CheckOutcome`; ``passed`` is False when any compared record has an mAP metric off by more
        than ``MAP_TOLERANCE`` (int8 records: only when both CPUs have VNNI or both lack it), other
        params/non-zero params/MACs, or a size off by more than ``SIZE_TOLERANCE``; a variant chosen by int8
        accuracy that differs between CPUs of the two kinds is not compared (``chosen_other_cpu``).
    """
    mine = {record["id"]: record for record in records_of(results)}
    theirs = {record["id"]: record for record in records_of(reference)}
    both = [record_id for record_id in theirs if record_id in mine]
    same_profile = [record_id for record_id in both
                    if mine[record_id].get("profile") == theirs[record_id].get("profile")]
    vnni = _has_vnni(results), _has_vnni(reference)
    other_arithmetic = None not in vnni and vnni[0] != vnni[1]
    int8_other_cpu = [record_id for record_id in same_profile
                      if other_arithmetic and (_int8(mine[record_id]) or _int8(theirs[record_id]))]
    chosen_other_cpu = [record_id for record_id in int8_other_cpu
                        if _choice(mine[record_id]) != _choice(theirs[record_id])]
    mismatches = [mismatch for record_id in same_profile if record_id not in chosen_other_cpu
                  for mismatch in _record_mismatches(mine[record_id], theirs[record_id],
                                                     compare_map=record_id not in int8_other_cpu)]
    speedups = [(record_id, _paired_speedup(mine[record_id]), _paired_speedup(theirs[record_id]))
                for record_id in same_profile
                if _paired_speedup(mine[record_id]) is not None or _paired_speedup(theirs[record_id]) is not None]
    return CheckOutcome(compared=[record_id for record_id in same_profile if record_id not in chosen_other_cpu],
                        mismatches=mismatches,
                        not_rerun=[record_id for record_id in theirs if record_id not in mine],
                        new=[record_id for record_id in mine if record_id not in theirs],
                        other_profile=[record_id for record_id in both if record_id not in same_profile],
                        speedups=speedups,
                        int8_other_cpu=[(record_id, mine[record_id].get("map"), theirs[record_id].get("map"))
                                        for record_id in int8_other_cpu],
                        chosen_other_cpu=[(record_id, _choice(mine[record_id]), _choice(theirs[record_id]))
                                          for record_id in chosen_other_cpu])
