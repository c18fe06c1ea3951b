"""Lesson 06's pieces that need no detector: the stage table and figure from records, the snippets' table, and
the combined targets read from the final record only."""

from __future__ import annotations

import matplotlib

from compresskit.harness import combined
from compresskit.harness.errata import SNIPPETS
from compresskit.harness.summary import errata_markdown, errata_rows
from compresskit.harness.targets import TARGETS, check_targets
from tests.test_reproduce_check import document, record

matplotlib.use("Agg")


def stage_document(final_map: float = 0.80, final_size: int = 2_000_000, final_speedup: float = 4.2) -> dict:
    """Both routes with hand-made numbers; the teacher at 0.83 mAP and 30 MB."""
    ort = combined.TEACHER_ORT
    records = [record(combined.TEACHER_EAGER, map_value=0.83, size=30_000_000),
               record(ort, baseline=combined.TEACHER_EAGER, map_value=0.83, size=30_000_000, speedup=1.1,
                      runtime="onnxruntime")]
    for stages, model in ((combined.ROUTES["prune -> distil -> int8"], "teacher"),
                          (combined.ROUTES["small design -> distil -> int8"], "student")):
        for step, stage in enumerate(stages[1:], start=1):
            last = step == len(stages) - 1
            records.append(record(stage.record, technique="combined", baseline=ort, model=model,
                                  runtime="onnxruntime", map_value=final_map if last else 0.84 - 0.01 * step,
                                  size=final_size if last else 30_000_000 // (2 * step),
                                  speedup=final_speedup if last else 1.0 + step))
    return document(*records)


def test_stage_rows_follow_the_routes_with_ratios_against_the_teacher():
    rows = combined.stage_rows(stage_document())
    assert [row["stage"] for row in rows] == [stage.name for stages in combined.ROUTES.values() for stage in stages]
    teacher, final = rows[0], rows[3]
    assert teacher["size_ratio"] == 1.0 and teacher["speedup"] == 1.0 and teacher["map_drop_points"] == 0.0
    assert final["record"] == combined.FINAL_TEACHER and final["size_ratio"] == 15.0 and final["speedup"] == 4.2
    assert round(final["map_drop_points"], 6) == 3.0
    table = combined.stages_markdown(stage_document())
    assert table.count("\n") == len(rows) + 1 and "| 15.0x | 4.20x [4.12-4.28] | 3.0 |" in table


def test_the_combined_targets_read_the_final_record_only():
    combined_targets = [target for target in TARGETS if target.id.startswith("combined-")]
    verdicts = {v.target.id: v for v in check_targets(stage_document(final_map=0.815), combined_targets)}
    # the intermediate stages (2x smaller, 2x faster) would fail every target if they were read
    assert all(verdict.record == combined.FINAL_TEACHER for verdict in verdicts.values())
    assert verdicts["combined-size"].status == "met" and verdicts["combined-speed"].status == "met"
    assert verdicts["combined-accuracy"].status == "met"
    slow = {v.target.id: v for v in check_targets(stage_document(final_speedup=3.5), combined_targets)}
    assert slow["combined-speed"].text() == "missed by 0.50x"
    assert check_targets([], combined_targets)[0].status == "not measured"


def test_the_stage_figure_draws_from_records_alone():
    figure = combined.plot_stages(stage_document())
    assert len(figure.axes) == 3 and figure.axes[1].get_yscale() == "log"
    assert [line.get_label() for line in figure.axes[0].get_lines()][:2] == list(combined.ROUTES)


def test_errata_rows_take_their_effect_from_the_first_evidence_present():
    captured = {snippet.key: f"what {snippet.key} did" for snippet in SNIPPETS}
    doc = stage_document()
    doc["records"] += [record("combined/teacher/int8", technique="static_ptq", baseline=combined.TEACHER_ORT,
                              map_value=0.828, size=7_500_000, speedup=2.0, runtime="onnxruntime")]
    rows = {row["snippet"]: row for row in errata_rows(captured, doc)}
    quantize = rows[next(s.code for s in SNIPPETS if s.key == "quantize_dynamic")]
    assert quantize["what happens"] == "what quantize_dynamic did"
    assert quantize["measured effect"].startswith("4.0x smaller, 2.00x faster, 0.2 mAP points lost")
    kd = rows[next(s.code for s in SNIPPETS if s.key == "kd_loss")]
    assert kd["measured effect"].startswith("-1.0 mAP points")  # kd (0.82) vs the small design (0.83): signed
    prune = rows[next(s.code for s in SNIPPETS if s.key == "prune")]
    assert prune["measured effect"] == "not measured in these records"  # no eager pruned record in this document
    table = errata_markdown(errata_rows({"prune": "line one\nline | two"}, doc))
    assert "line one line \\| two" in table and table.count("\n") == len(SNIPPETS) + 1


def test_an_int8_stage_picked_by_auto_names_its_runtime_in_the_stage_table():
    doc = stage_document()
    final = next(r for r in doc["records"] if r["id"] == combined.FINAL_TEACHER)
    final["runtime"] = "openvino"
    final["config"] = {"chosen": True, "auto": {"picked": "openvino", "reason": "openvino is the fastest ..."}}
    rows = {row["record"]: row for row in combined.stage_rows(doc)}
    assert rows[combined.FINAL_TEACHER]["action"].endswith("(openvino)")
    assert not rows[combined.FINAL_STUDENT]["action"].endswith(")")  # no auto config: the stage's own words
