"""Figures drawn from results alone: the Pareto frontier, readable Pareto figures, and every figure of
``compresskit figures`` / ``draw_figures`` redrawn from a results file (the committed reference and a small one)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from compresskit import measure, report  # noqa: E402
from compresskit.cli import main  # noqa: E402
from compresskit.harness.figures import FIGURES, draw_figures  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "reports" / "results.json"
ENVIRONMENT = {"cpu": "Test CPU 9000", "isa": ["avx2", "avx512_vnni"], "threads": 2, "torch": "2", "onnxruntime": "1"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(record_id: str, *, technique: str = "baseline", runtime: str = "torch-eager", baseline: str | None = None,
           map_value: float | None = 0.5, macs: int = 10**9, size: int = 10**6, median: float = 10.0,
           model: str = "teacher", config: dict | None = None) -> dict:
    latency = measure.Latency(median_ms=median, p90_ms=median * 1.1, runs=30, threads=2, batch=1)
    return report.make_record(id=record_id, lesson="99_test", profile="embedded", technique=technique, model=model,
                              runtime=runtime, metrics=None if map_value is None else {"map": map_value},
                              baseline=baseline, macs=macs, size=(size, size // 2),
                              latency=latency.as_record((64, 64)), config=config)


def small_document() -> dict:
    """A baseline, a structured and an int8 variant, and an unstructured sweep: no calibration, KD or backbones."""
    records = [record("pruning/teacher/eager", map_value=0.80, median=40.0, size=30 * 10**6),
               record("pruning/teacher/structured-50/eager", technique="structured_pruning", map_value=0.78,
                      baseline="pruning/teacher/eager", median=20.0, macs=2 * 10**8, size=8 * 10**6),
               record("quantization/teacher/ort-int8", technique="static_ptq", runtime="onnxruntime", map_value=0.79,
                      baseline="pruning/teacher/eager", median=12.0, size=8 * 10**6)]
    records += [record(f"pruning/teacher/unstructured-{amount:.0%}", technique="unstructured_pruning",
                       map_value=0.8 * (1 - amount), baseline="pruning/teacher/eager", median=40.0,
                       size=30 * 10**6, config={"amount": amount}) for amount in (0.3, 0.6)]
    return {"schema": report.SCHEMA, "environment": ENVIRONMENT, "records": records}


# --------------------------------------------------------------------------------------------- frontier
def test_pareto_frontier_keeps_the_non_dominated_points_by_cost():
    points = [(10.0, 0.50),  # 0: on the frontier
              (5.0, 0.40),  # 1: same cost as 2, less accurate
              (5.0, 0.45),  # 2: the cheapest at its accuracy
              (20.0, 0.50),  # 3: as accurate as 0, costs more
              (8.0, 0.45),  # 4: as accurate as 2, costs more
              (None, 0.90),  # 5: no cost
              (3.0, None),  # 6: no accuracy
              (5.0, 0.45),  # 7: identical to 2: neither dominates the other
              (30.0, 0.70),  # 8: most accurate
              (float("nan"), 1.0),  # 9: NaN cost
              None,  # 10: no point at all
              (25.0, 0.60)]  # 11: between 0 and 8
    assert report.pareto_frontier(points) == [2, 7, 0, 11, 8]


@pytest.mark.parametrize("points, frontier", [([], []), ([(1.0, 0.1)], [0]), ([(None, None)], []),
                                              ([(2.0, 0.5), (1.0, 0.5)], [1]), ([(1.0, 0.4), (1.0, 0.5)], [1])])
def test_pareto_frontier_edge_cases(points, frontier):
    assert report.pareto_frontier(points) == frontier


# --------------------------------------------------------------------------------------------- Pareto figure
def _texts(figure) -> set[str]:
    return {text.get_text() for axes in figure.axes for text in axes.texts if text.get_text()}


def _caption(figure) -> str:
    return " ".join(text.get_text() for text in figure.texts)


def test_plot_pareto_draws_the_frontier_with_short_labels_and_a_caption():
    document = small_document()
    figure = report.plot_pareto(document, x="latency")
    axes = figure.axes[0]
    frontier = axes.lines[-1]  # drawn after the baseline lines
    assert list(frontier.get_xdata()) == [12.0, 40.0] and list(frontier.get_ydata()) == pytest.approx([79.0, 80.0])
    assert frontier.get_drawstyle() == "steps-post"
    # Few points: every one labelled, without its study prefix.
    assert _texts(figure) == {"teacher/eager", "teacher/structured-50/eager", "teacher/ort-int8",
                              "teacher/unstructured-30%", "teacher/unstructured-60%"}
    markers = {collection.get_paths()[0].vertices.shape for collection in axes.collections}
    assert len(markers) == 2  # circles (torch eager) and squares (ONNX Runtime)
    assert "ms" in axes.get_xlabel() and "x100" in axes.get_ylabel()
    assert "Test CPU 9000" in _caption(figure) and "avx512_vnni" in _caption(figure)
    assert _caption(report.plot_pareto(document["records"], x="latency")) == ""  # records only: no caption


def test_points_on_one_spot_share_one_label():
    same = {"map_value": 0.6, "median": 10.0}
    records = [record("a/teacher/eager", **same), record("b/teacher/eager", **same), record("c/x", **same),
               record("d/y", **same), record("e/z", **same), record("f/cheap", map_value=0.2, median=1.0)]
    assert _texts(report.plot_pareto(records, x="latency")) == {"teacher/eager, x +2", "cheap"}


def test_plot_pareto_labels_only_the_frontier_when_crowded_and_logs_a_wide_axis():
    records = [record(f"study/variant-{index}", map_value=0.3 + 0.01 * index, median=2.0 + 10 * index)
               for index in range(20)]
    records.append(record("study/dominated", map_value=0.1, median=300.0))
    figure = report.plot_pareto(records, x="latency")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and "log" in axes.get_xlabel()
    # Every variant-N is on the frontier (more latency, more mAP); the dominated one is not labelled.
    assert _texts(figure) == {f"variant-{index}" for index in range(20)}
    narrow = report.plot_pareto(records[:3], x="latency")  # 2 to 22 ms: more than 10x
    assert narrow.axes[0].get_xscale() == "log"
    assert report.plot_pareto(records[1:3], x="latency").axes[0].get_xscale() == "linear"  # 12 to 22 ms


def test_plot_pareto_into_a_callers_axes_keeps_its_legend_in_those_axes():
    from matplotlib.figure import Figure

    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert report.plot_pareto(small_document()["records"], x="size", ax=left) is figure
    assert not figure.legends and left.get_legend() is not None and right.get_legend() is None


# --------------------------------------------------------------------------------------------- whole documents
@pytest.fixture(scope="module")
def reference_figures(tmp_path_factory) -> tuple[list[Path], list[str]]:
    folder = tmp_path_factory.mktemp("reference")
    shutil.copy(REFERENCE, folder / "results.json")
    messages: list[str] = []
    return draw_figures(folder / "results.json", folder / "figures", log=messages.append), messages


def test_every_figure_redraws_from_the_reference_file_alone(reference_figures):
    drawn, messages = reference_figures
    assert [path.name for path in drawn] == list(FIGURES)
    assert set(FIGURES) == {"pareto_latency.png", "pareto_size.png", "pareto_macs.png", "sparsity.png",
                            "calibration.png", "distillation.png", "backbones.png", "combined.png"}
    for path in drawn:
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 20_000, path
    assert not any(message.startswith("skipped") for message in messages)


def test_a_figure_whose_records_are_absent_is_skipped_and_said(tmp_path):
    messages: list[str] = []
    drawn = draw_figures(small_document(), tmp_path, log=messages.append)
    assert [path.name for path in drawn] == ["pareto_latency.png", "pareto_size.png", "pareto_macs.png",
                                             "sparsity.png"]
    skipped = [message for message in messages if message.startswith("skipped")]
    assert len(skipped) == 4
    assert any("calibration.png" in message and "--only quantization" in message for message in skipped)
    assert any("distillation.png" in message and "--only distillation" in message for message in skipped)
    assert any("backbones.png" in message and "--only backbones" in message for message in skipped)
    assert any("combined.png" in message and "--only combined" in message for message in skipped)
    assert all(path.stat().st_size > 10_000 for path in drawn)


def test_study_figures_need_their_records():
    with pytest.raises(report.MissingRecordsError, match="--only distillation"):
        report.plot_distillation(small_document())
    with pytest.raises(report.MissingRecordsError, match="--only quantization"):
        report.plot_calibration_sweep(small_document())


def test_calibration_sweeps_group_by_baseline_model_and_setting():
    def int8(images: int, method: str = "minmax", model: str = "teacher") -> dict:
        config = {"calibration_images": images, "activations": "uint8", "config": {"method": method}}
        return record(f"q/{model}/{method}-{images}", technique="static_ptq", runtime="onnxruntime", model=model,
                      baseline="q/fp32", map_value=0.5 + images / 1000, config=config)

    records = [record("q/fp32", runtime="onnxruntime"), int8(4), int8(16), int8(16), int8(64, "entropy"),
               int8(64, model="student")]
    sweeps = report.calibration_sweeps(records)
    assert list(sweeps) == [("q/fp32", "teacher")]  # the student has one size only: no sweep
    settings = sweeps[("q/fp32", "teacher")]
    assert sorted(settings["teacher, minmax, uint8 activations"]) == [4, 16]
    assert list(settings["teacher, entropy, uint8 activations"]) == [64]  # drawn as a point beside the curve
    figure = report.plot_calibration_sweep(records)
    assert figure.axes[0].get_xscale() == "log" and "calibration images" in figure.axes[0].get_xlabel()


def test_distillation_bars_show_each_student_against_its_control():
    records = [record("d/none", model="student", map_value=0.50),
               record("d/logit", technique="logit_kd", model="student", baseline="d/none", map_value=0.52),
               record("d/both", technique="kd", model="student", baseline="d/none", map_value=0.53)]
    figure = report.plot_distillation({"environment": ENVIRONMENT, "records": records})
    labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert labels == ["none\n(no KD, control)", "logit\n(logit_kd)", "both\n(kd)"]
    bar_texts = _texts(figure)
    assert {"50.0", "52.0\n+2.0", "53.0\n+3.0"} <= bar_texts
    assert "Test CPU 9000" in _caption(figure)


# --------------------------------------------------------------------------------------------- command
def test_figures_command_draws_from_a_results_file(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(small_document()))
    assert main(["figures", str(results), "--out", str(tmp_path / "figures")]) == 0
    out = capsys.readouterr().out
    assert "drew 4 figure(s)" in out and "skipped backbones.png" in out
    assert (tmp_path / "figures" / "sparsity.png").stat().st_size > 10_000


def test_figures_command_says_what_is_missing(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "nowhere.json"), "--out", str(tmp_path)]) == 2
    assert "no results file" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"schema": report.SCHEMA, "environment": {}, "records": []}))
    assert main(["figures", str(empty), "--out", str(tmp_path / "figures")]) == 2
    assert "none of the records" in capsys.readouterr().err


def test_short_labels_drop_the_study_prefix():
    assert report.short_label("quantization/teacher/ort-int8") == "teacher/ort-int8"
    assert report.short_label("base") == "base"
    assert not math.isnan(report.technique_colour("static_ptq")[0])
    assert report.technique_colour("static_ptq") != report.technique_colour("structured_pruning")
