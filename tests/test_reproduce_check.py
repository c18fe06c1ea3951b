"""``reproduce --check`` (a run against the committed reference), the lessons' targets and ``summary.md``."""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from compresskit import measure, report
from compresskit.cli import main
from compresskit.harness.summary import format_summary
from compresskit.harness.targets import TARGETS, Target, check_target, check_targets

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reports"
# The module, not the function of the same name that compresskit.harness exports.
reproduce_module = importlib.import_module("compresskit.harness.reproduce")


def record(record_id: str, *, technique: str = "baseline", baseline: str | None = None, map_value: float = 0.5,
           macs: int = 1000, size: int = 10_000, median: float = 10.0, speedup: float | None = None,
           model: str = "teacher", runtime: str = "torch-eager") -> dict:
    latency = measure.Latency(median_ms=median, p90_ms=median * 1.1, runs=30, threads=2, batch=1)
    paired = None
    if speedup is not None:
        side = measure.Latency(median_ms=median, p90_ms=median * 1.1, runs=30, threads=2, batch=1)
        paired = measure.PairedLatency(speedup=speedup, low=speedup * 0.98, high=speedup * 1.02, pairs=30,
                                       threads=2, baseline=side, candidate=side).as_record(baseline)
    return report.make_record(id=record_id, lesson="99_test", profile="embedded", technique=technique, model=model,
                              runtime=runtime, metrics={"map": map_value, "map50": map_value + 0.2},
                              baseline=baseline, params=100, nonzero_params=90, macs=macs, size=(size, size // 2),
                              latency=latency.as_record((64, 64)), paired_latency=paired)


def document(*records: dict) -> dict:
    return {"schema": report.SCHEMA, "environment": {"cpu": "Test CPU", "isa": ["avx2"]}, "records": list(records)}


def hand_made() -> dict:
    return document(record("s/base", map_value=0.60, size=40_000),
                    record("s/int8", technique="static_ptq", baseline="s/base", map_value=0.59, size=10_000,
                           speedup=2.5))


def altered(doc: dict, record_id: str, **changes) -> dict:
    changed = copy.deepcopy(doc)
    target = next(r for r in changed["records"] if r["id"] == record_id)
    for field, change in changes.items():
        target[field] = change(target[field])
    return changed


def _failing(outcome: report.CheckOutcome) -> set[tuple[str, str]]:
    return {(mismatch.record, mismatch.field) for mismatch in outcome.mismatches}


# --------------------------------------------------------------------------------------------- the comparison
def test_a_document_passes_against_itself():
    outcome = report.check_against_reference(hand_made(), hand_made())
    assert outcome.passed and outcome.compared == ["s/base", "s/int8"] and not outcome.not_rerun
    assert outcome.speedups == [("s/int8", 2.5, 2.5)]


@pytest.mark.parametrize("field, change", [("map", lambda v: v + 0.01), ("macs", lambda v: v + 1),
                                           ("size_bytes", lambda v: round(v * 1.02)),
                                           ("params", lambda v: v - 1), ("map50", lambda v: None)])
def test_a_change_outside_the_tolerance_fails_naming_record_and_field(field, change):
    outcome = report.check_against_reference(altered(hand_made(), "s/int8", **{field: change}), hand_made())
    assert not outcome.passed and _failing(outcome) == {("s/int8", field)}
    assert f"FAIL s/int8: {field}" in outcome.format()


def test_changes_inside_the_tolerances_and_any_latency_change_pass():
    run = altered(hand_made(), "s/int8", size_bytes=lambda v: round(v * 1.005), map=lambda v: v + 0.005,
                  latency_ms=lambda v: {**v, "median": v["median"] * 3},
                  paired_latency=lambda v: {**v, "speedup": 0.5, "interval": [0.4, 0.6]})
    outcome = report.check_against_reference(run, hand_made())
    assert outcome.passed, outcome.format()
    assert outcome.speedups == [("s/int8", 0.5, 2.5)]
    assert "0.50x vs 2.50x" in outcome.format()


def test_non_zero_params_of_stand_in_weights_are_not_compared():
    stand_in = {"map_source": "training record (checkpoint not shipped)"}
    reference = altered(hand_made(), "s/int8", config=lambda _: stand_in)
    run = altered(reference, "s/int8", nonzero_params=lambda v: v - 1)
    assert report.check_against_reference(run, reference).passed
    shipped = altered(hand_made(), "s/int8", nonzero_params=lambda v: v - 1)
    assert _failing(report.check_against_reference(shipped, hand_made())) == {("s/int8", "nonzero_params")}


def test_records_missing_from_the_run_are_not_rerun_not_failures():
    run = document(hand_made()["records"][0], record("s/new"))
    outcome = report.check_against_reference(run, hand_made())
    assert outcome.passed and outcome.not_rerun == ["s/int8"] and outcome.new == ["s/new"]
    assert "not rerun" in outcome.format() and "s/int8" in outcome.format()


def test_records_of_another_profile_are_not_compared():
    run = altered(hand_made(), "s/base", profile=lambda _: "coco", map=lambda v: 0.1)
    outcome = report.check_against_reference(run, hand_made())
    assert outcome.passed and outcome.other_profile == ["s/base"] and outcome.compared == ["s/int8"]


def test_int8_accuracy_is_shown_not_compared_between_a_cpu_with_vnni_and_one_without():
    vnni_reference = hand_made()
    vnni_reference["environment"]["isa"] = ["avx2", "avx512_vnni"]
    run = altered(hand_made(), "s/int8", map=lambda v: v - 0.05)  # AVX2 only: other int8 arithmetic
    outcome = report.check_against_reference(run, vnni_reference)
    assert outcome.passed, outcome.format()
    assert outcome.int8_other_cpu == [("s/int8", pytest.approx(0.54), 0.59)] and "0.5400 vs 0.5900" in outcome.format()
    # fp32 records and everything but the int8 mAP are still compared across the two CPUs
    assert _failing(report.check_against_reference(altered(run, "s/base", map=lambda v: v - 0.05), vnni_reference)) \
        == {("s/base", "map")}
    assert _failing(report.check_against_reference(altered(run, "s/int8", macs=lambda v: v + 1), vnni_reference)) \
        == {("s/int8", "macs")}
    # two CPUs of the same kind: the int8 mAP must reproduce
    assert _failing(report.check_against_reference(run, hand_made())) == {("s/int8", "map")}


def test_a_variant_chosen_by_int8_accuracy_is_not_compared_when_the_other_cpu_chose_another():
    def keeping(doc: dict, parts: list[str], size: int) -> dict:
        changed = altered(doc, "s/int8", size_bytes=lambda v: size)
        changed["records"][1]["config"] = {"float_parts": parts}
        return changed

    vnni_reference = keeping(hand_made(), ["layer3"], 11_000)
    vnni_reference["environment"]["isa"] = ["avx2", "avx512_vnni"]
    run = keeping(hand_made(), ["head"], 9_500)  # this CPU's int8 hurt the head most: another part stays float
    outcome = report.check_against_reference(run, vnni_reference)
    assert outcome.passed and "s/int8" not in outcome.compared, outcome.format()
    assert outcome.chosen_other_cpu == [("s/int8", {"float_parts": ["head"]}, {"float_parts": ["layer3"]})]
    assert "this run {'float_parts': ['head']}, the reference {'float_parts': ['layer3']}" in outcome.format()
    # the same choice on both CPUs: the variant is the same, and its size must reproduce
    same_choice = keeping(hand_made(), ["layer3"], 9_500)
    assert _failing(report.check_against_reference(same_choice, vnni_reference)) == {("s/int8", "size_bytes")}
    # CPUs of the same kind must make the same choice: a different one fails on what it changes
    vnni_run = copy.deepcopy(run)
    vnni_run["environment"]["isa"] = ["avx2", "avx512_vnni"]
    assert _failing(report.check_against_reference(vnni_run, vnni_reference)) == {("s/int8", "size_bytes")}


@pytest.fixture(scope="module")
def reference() -> dict:
    return report.read_results(REFERENCE_DIR)


def test_the_reference_passes_against_itself(reference):
    outcome = report.check_against_reference(reference, reference)
    assert outcome.passed and len(outcome.compared) == len(reference["records"])


def test_an_altered_reference_fails_on_each_altered_field(reference):
    run = altered(reference, "quantization/teacher/ort-int8", map=lambda v: v + 0.01)
    run = altered(run, "pruning/teacher/structured-50/eager", macs=lambda v: v + 1)
    run = altered(run, "baseline/student/eager", size_bytes=lambda v: round(v * 1.02))
    run = altered(run, "baseline/teacher/eager", size_bytes=lambda v: round(v * 1.005))  # within 1 %
    outcome = report.check_against_reference(run, reference)
    assert _failing(outcome) == {("quantization/teacher/ort-int8", "map"),
                                 ("pruning/teacher/structured-50/eager", "macs"),
                                 ("baseline/student/eager", "size_bytes")}


# --------------------------------------------------------------------------------------------- the command
@pytest.fixture
def reference_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the reference results as a run's OUT folder; figures are not drawn (they have their own tests)."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(REFERENCE_DIR / "results.json", out / "results.json")
    monkeypatch.setattr(reproduce_module, "draw_figures", lambda document, folder, log=None: [])
    return out


def test_check_without_rerunning_passes_on_the_reference(reference_copy, capsys):
    assert main(["reproduce", "--skip-run", "--check", "--out", str(reference_copy), "--reference",
                 str(REFERENCE_DIR)]) == 0
    out = capsys.readouterr().out
    assert "passed" in out and "paired speed-ups" in out
    assert (reference_copy / "summary.md").is_file()


def test_check_without_rerunning_fails_naming_record_and_field(reference_copy, capsys):
    results = reference_copy / "results.json"
    document_ = json.loads(results.read_text())
    results.write_text(json.dumps(altered(document_, "distill/student-both/eager", map=lambda v: v - 0.02)))
    assert main(["reproduce", "--skip-run", "--check", "--out", str(reference_copy), "--reference",
                 str(REFERENCE_DIR)]) == 1
    assert "FAIL distill/student-both/eager: map" in capsys.readouterr().out


def test_skip_run_refuses_options_it_cannot_use(reference_copy, capsys):
    assert main(["reproduce", "--skip-run", "--only", "pruning", "--out", str(reference_copy)]) == 2
    assert "--skip-run" in capsys.readouterr().err
    assert main(["reproduce", "--skip-run", "--out", str(reference_copy / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_profile_and_check_pass_through_after_a_run(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(hand_made()))
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    (reference_dir / "results.json").write_text(json.dumps(altered(hand_made(), "s/base", macs=lambda v: v + 1)))
    calls = []
    stub = types.ModuleType("compresskit.harness.reproduce")
    stub.REFERENCE_DIR, stub.STUDIES = reference_dir, ("baselines",)
    stub.reproduce = lambda folder, **kwargs: calls.append(kwargs) or folder / "results.json"
    stub.check_results = reproduce_module.check_results
    monkeypatch.setitem(sys.modules, "compresskit.harness.reproduce", stub)
    assert main(["reproduce", "--profile", "coco", "--check", "--out", str(out), "--reference",
                 str(reference_dir)]) == 1
    assert calls == [{"studies": None, "profile": "coco", "runs": 30, "update_reference": False, "restart": False}]
    assert "FAIL s/base: macs" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- targets, summary
def _verdicts(doc) -> dict[str, str]:
    return {verdict.target.id: verdict.text() for verdict in check_targets(doc)}


def test_targets_on_the_reference_match_the_readme(reference):
    verdicts = _verdicts(reference)
    assert verdicts["pruning-accuracy"] == "missed by 0.15 points"
    assert verdicts["pruning-speed"] == "met"
    assert verdicts["int8-size"] == "met" and verdicts["int8-accuracy"] == "met"
    assert verdicts["int8-speed-teacher"] == "missed by 0.88x"
    assert verdicts["int8-speed-student"] == "missed by 0.66x"
    assert verdicts["int8-speed-pruned"] == "missed by 0.34x"
    assert verdicts["kd-gain"] == "met"
    assert verdicts["pruned-kd-accuracy"] == "missed by 1.27 points"
    assert verdicts["backbone-speed"] == "missed by 1.99x"  # EfficientNet-B0: within 5 points, 1.01x
    assert verdicts["qat-accuracy"] == "met"  # from the QAT training record: 83.05 against 82.97 fp32
    for target in ("combined-size", "combined-speed", "combined-accuracy"):
        assert verdicts[target] == "met"


def test_targets_take_the_worst_record_or_with_any_record_the_best():
    doc = document(record("x/base", map_value=0.80, size=100_000),
                   record("x/a", technique="combined", baseline="x/base", map_value=0.79, size=9_000,
                          speedup=5.0, runtime="onnxruntime"),
                   record("x/b", technique="combined", baseline="x/base", map_value=0.77, size=12_000,
                          speedup=3.0, runtime="onnxruntime"))
    combined = (("technique", "combined"),)
    size = Target("size", "every combined record 10x smaller", ("x/*",), "size_ratio", 10.0, where=combined)
    accuracy = Target("accuracy", "every combined record within 2 points", ("x/*",), "map_drop_points", 2.0,
                      where=combined)
    verdicts = {verdict.target.id: verdict for verdict in check_targets(doc, (size, accuracy))}
    assert verdicts["size"].text() == "missed by 1.67x" and verdicts["size"].record == "x/b"
    assert verdicts["accuracy"].text() == "missed by 1.00 points"
    best = Target("any", "one combined record 4x faster", ("x/*",), "paired_speedup", 4.0,
                  where=(("technique", "combined"),), any_record=True)
    assert check_target(best, doc).status == "met" and check_target(best, doc).record == "x/a"
    within = Target("near", "4x faster within 2 points", ("x/*",), "paired_speedup", 4.0,
                    where=(("technique", "combined"),), any_record=True, max_map_drop=0.5)
    assert check_target(within, doc).text() == "missed (no record within 0.5 mAP points)"


def test_a_target_for_one_kind_of_cpu_is_not_measured_on_the_other():
    doc = document(record("x/base", map_value=0.80), record("x/a", technique="combined", baseline="x/base",
                                                             map_value=0.80, speedup=5.0, runtime="onnxruntime"))
    vnni = Target("vnni", "5x on VNNI", ("x/a",), "paired_speedup", 4.0, cpu="vnni")
    avx2 = Target("avx2", "4x on AVX2 only", ("x/a",), "paired_speedup", 4.0, cpu="avx2-only")
    doc["environment"]["isa"] = ["avx", "avx2", "avx512f", "avx512_vnni", "fma"]
    assert check_target(vnni, doc).status == "met"
    assert check_target(avx2, doc).text() == "not measured (this run was on a CPU with VNNI or AMX)"
    doc["environment"]["isa"] = ["avx", "avx2", "fma"]
    assert check_target(vnni, doc).text() == "not measured (this run was on an AVX2-only CPU)"
    assert check_target(avx2, doc).status == "met"


def test_the_reference_search_misses_its_targets_by_what_its_summary_says():
    searched = json.loads((Path(__file__).resolve().parent.parent / "reports" / "search" / "results.json").read_text())
    verdicts = {verdict.target.id: verdict.text() for verdict in check_targets(searched)}
    assert verdicts["search-speed-vnni"] == "missed by 2.44x"  # the chosen ONNX Runtime int8 teacher: 2.56x
    assert verdicts["search-size"] == "missed by 8.06x"
    assert verdicts["search-pruning-macs"] == "missed by 1.00x"  # no pruned chain stayed within 1 point
    assert verdicts["search-speed-avx2"].startswith("not measured")


def test_every_target_names_a_known_measure():
    from compresskit.harness.targets import MEASURES

    assert all(target.measure in MEASURES for target in TARGETS)
    assert len({target.id for target in TARGETS}) == len(TARGETS)


def test_summary_has_a_row_per_record_and_the_target_verdicts(reference):
    summary = format_summary(reference)
    records_part, targets_part = summary.split("## Targets")
    rows = [line for line in records_part.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(reference["records"]) + 1  # and the header
    assert "| pruning | teacher/structured-50/eager | structured_pruning | torch-eager | 80.8 |" in records_part
    assert "2.06x [" in records_part and "Test CPU" not in summary and "AMD EPYC" in summary
    assert "| pruning-accuracy |" in targets_part and "**missed by 0.15 points**" in targets_part
    assert "| qat-accuracy |" in targets_part and "not measured" in targets_part
