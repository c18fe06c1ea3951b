"""Figures drawn from results alone: the Pareto frontier, readable figures (labels inside their axes and apart,
axes that show a small difference, paired speed-ups with their intervals), every figure function returning a bare
Figure, and every figure of ``compresskit figures`` / ``draw_figures`` redrawn from a results file (the committed
reference and a small one)."""

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
from compresskit.errors import CompressKitError  # noqa: E402
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


def test_distillation_shows_each_student_against_its_control_and_the_gain():
    records = [record("d/none", model="student", map_value=0.50),
               record("d/logit", technique="logit_kd", model="student", baseline="d/none", map_value=0.52),
               record("d/both", technique="kd", model="student", baseline="d/none", map_value=0.53)]
    figure = report.plot_distillation({"environment": ENVIRONMENT, "records": records}, target_gain=2.0)
    models, gains = figure.axes
    labels = [label.get_text() for label in models.get_xticklabels()]
    assert labels == ["none\n(no KD, control)", "logit\n(logit_kd)", "both\n(kd)"]
    # A 2-point gain must be visible: the mAP axis is zoomed to the models, not drawn from 0 ...
    low, high = models.get_ylim()
    assert 40 < low < 50 and high < 60 and "not from 0" in models.get_ylabel()
    assert {"50.0", "52.0", "53.0"} <= {text.get_text() for text in models.texts}
    # ... and the difference itself is drawn from its true zero, as bars, with the target.
    assert [patch.get_height() for patch in gains.patches] == pytest.approx([2.0, 3.0])
    assert gains.get_ylim()[0] == 0.0 and "gain" in gains.get_ylabel()
    assert {"+2.0", "+3.0"} <= _texts(figure)
    assert any(line.get_ydata()[0] == 2.0 for line in gains.get_lines())  # the target line
    assert "Test CPU 9000" in _caption(figure)


def test_sparsity_plots_the_paired_speedup_with_its_interval():
    document = small_document()
    by_id = {r["id"]: r for r in document["records"]}
    intervals = {"pruning/teacher/unstructured-30%": (1.02, [0.99, 1.05]),
                 "pruning/teacher/unstructured-60%": (0.95, [0.90, 0.97])}
    for record_id, (speedup, interval) in intervals.items():
        by_id[record_id]["paired_latency"] = {"baseline": "pruning/teacher/eager", "speedup": speedup,
                                              "interval": interval, "pairs": 30}
        by_id[record_id]["latency_ms"]["median"] = 500.0  # a sequential median that must not be drawn
    figure = report.plot_sparsity(document)
    speed = figure.axes[2]
    assert "paired" in speed.get_ylabel() and "latency" not in speed.get_ylabel()
    (bars,) = speed.containers  # one errorbar container: the speed-ups and their intervals
    line, _, (segments,) = bars
    assert list(line.get_xdata()) == pytest.approx([0.0, 30.0, 60.0])
    assert list(line.get_ydata()) == pytest.approx([1.0, 1.02, 0.95])  # the unpruned baseline is exactly 1x
    spans = sorted(value for (x, y0), (_, y1) in segments.get_segments() for value in (x, min(y0, y1), max(y0, y1)))
    assert spans == pytest.approx(sorted([0.0, 1.0, 1.0, 30.0, 0.99, 1.05, 60.0, 0.90, 0.97]))
    low, high = speed.get_ylim()
    assert low < 0.9 and high > 1.05 and high < 2.0  # the intervals fit; 500 ms medians are nowhere


def test_calibration_axis_spans_at_least_two_points():
    records = [record("q/fp32", runtime="onnxruntime", map_value=0.800)]
    records += [record(f"q/int8-{n}", technique="static_ptq", runtime="onnxruntime", baseline="q/fp32",
                       map_value=0.798 + n / 100_000, config={"calibration_images": n, "config": {"method": "minmax"}})
                for n in (4, 16, 64)]
    axes = report.plot_calibration_sweep(records).axes[0]
    low, high = axes.get_ylim()
    assert high - low >= 2.0 and "within 0.2 points of fp32" in axes.get_title()


def _tradeoff_rows() -> list[dict]:
    def row(name, map_value, speedup, int8_speedup):
        return {"name": name, "map": map_value, "speedup": speedup, "int8_speedup": int8_speedup, "int8_map": None}
    # Two backbones on almost the same spot: their labels must still not overlap.
    return [row("alpha", 0.79, 1.00, 1.60), row("beta", 0.79, 0.98, 2.00), row("gamma", 0.70, 1.50, 1.60)]


def test_backbone_tradeoffs_have_a_title_and_labels_that_do_not_overlap():
    figure = report.plot_tradeoffs(_tradeoff_rows(), teacher_map=0.83, target_speedup=3.0, target_map_gap=0.05)
    axes = figure.axes[0]
    assert axes.get_title() and "speed-up" in axes.get_xlabel() and "mAP" in axes.get_ylabel()
    assert {"alpha", "beta", "gamma"} <= _texts(figure)
    assert report.labels_overlapping(axes) == [] and report.labels_outside(axes) == []
    assert any(list(line.get_xdata()) == [3.0, 3.0] for line in axes.get_lines())  # the speed target


def _stage_rows() -> list[dict]:
    def row(route, stage, map_value, size, speedup):
        return {"route": route, "stage": stage, "map": map_value, "size_mb": size, "speedup": speedup,
                "speedup_interval": None if speedup == 1.0 else [speedup - 0.1, speedup + 0.2]}
    return [row("prune", "teacher", 0.83, 30.0, 1.0), row("prune", "pruned", 0.82, 7.0, 2.5),
            row("prune", "int8", 0.82, 2.0, 4.4), row("small", "teacher", 0.83, 30.0, 1.0),
            row("small", "small design", 0.58, 4.0, 2.5), row("small", "int8", 0.59, 1.2, 4.3)]


def test_stages_name_each_routes_stage_apart_and_keep_values_off_each_other():
    targets = report.StageTargets(map_drop_points=2.0, size_ratio=10.0, speedup=4.0)
    figure = report.plot_stages(_stage_rows(), targets)
    assert len(figure.axes) == 3 and figure.axes[1].get_yscale() == "log"
    for axes in figure.axes:
        assert not any("\n" in label.get_text() for label in axes.get_xticklabels())  # no names stacked on a tick
        names = {text.get_text(): text.get_color() for text in axes.texts}
        assert names["pruned"] != names["small design"]  # each route's stage in the route's colour
        assert report.labels_overlapping(axes) == []
    speed = figure.axes[2]
    assert len(speed.containers) == 2  # both routes' speed-ups with their intervals
    assert {"4.40x", "4.30x", "1.00x", "target: 4x faster"} <= {text.get_text() for text in speed.texts}
    with pytest.raises(CompressKitError):
        report.plot_stages([])


@pytest.fixture(scope="module")
def reference_document() -> dict:
    return report.read_results(REFERENCE)


@pytest.mark.parametrize("x", ["latency", "size", "macs"])
def test_every_variant_labels_stay_inside_the_axes_and_apart(reference_document, x):
    figure = report.plot_every_variant(reference_document, x=x)
    axes = figure.axes[0]
    assert axes.texts, "the frontier is labelled"
    assert report.labels_outside(axes) == []
    assert report.labels_overlapping(axes) == []
    assert not any(text.get_text().startswith("sensitivity/") for text in axes.texts)
    # The collapsed sparsities (mAP 0) cut the axis instead of squashing every other variant into a band.
    assert 40 <= axes.get_ylim()[0] <= 60
    assert any("unstructured-90%" in text.get_text() and "below" in text.get_text() for text in axes.texts)


def test_every_figure_function_returns_a_figure_with_labelled_axes(reference_document):
    from matplotlib.figure import Figure

    rows = [{"temperature": t, "grad_norm": 0.1 * t} for t in (1, 2, 4)]
    steps = [{"step": i, "kd": 1.0 / (i + 1), "detection": 2.0 / (i + 1)} for i in range(12)]
    iterative = [{"ratio": 0.25, "macs_pruned": 8e8, "macs_finetuned": 8e8, "map_pruned": 0.6, "map_finetuned": 0.7}]
    baseline, sweep = report.unstructured_sweep(reference_document)
    figures = {"plot_every_variant": report.plot_every_variant(reference_document),
               "plot_pareto": report.plot_pareto(reference_document["records"][:6]),
               "plot_sparsity": report.plot_sparsity(reference_document),
               "plot_unstructured": report.plot_unstructured(baseline, sweep),
               "plot_iterative": report.plot_iterative(iterative, 0.8, 10**9),
               "plot_calibration_sweep": report.plot_calibration_sweep(reference_document),
               "plot_distillation": report.plot_distillation(reference_document),
               "plot_gradient_scale": report.plot_gradient_scale(rows, rows),
               "plot_kd_steps": report.plot_kd_steps(steps, title="loss terms", smooth=3),
               "plot_tradeoffs": report.plot_tradeoffs(_tradeoff_rows(), teacher_map=0.83),
               "plot_stages": report.plot_stages(_stage_rows()),
               "plot_curve": report.plot_curve([1, 2], [3, 4], "x", "y"),
               "plot_ranked_bars": report.plot_ranked_bars({"a": 1.0, "b": 2.0}, "mAP"),
               "metric_bars": report.metric_bars(reference_document["records"][:2])}
    for name, figure in figures.items():
        assert isinstance(figure, Figure), name
        for axes in figure.axes:  # each axis says what it shows: a label, or named categories
            assert axes.get_xlabel() or any(label.get_text() for label in axes.get_xticklabels()), name
            assert axes.get_ylabel() or any(label.get_text() for label in axes.get_yticklabels()), name
        assert figure.canvas.manager is None, f"{name} left its figure open in pyplot"


def test_detection_figures_return_figures():
    import torch
    from matplotlib.figure import Figure

    from compresskit.data.dataset import LabelMap

    label_map = LabelMap.contiguous([{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}])
    image = torch.rand(3, 32, 32)
    target = {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1]), "image_id": 7}

    class Images(list):
        label_map = None

    dataset = Images([(image, target)])
    dataset.label_map = label_map
    grid = report.sample_grid(dataset, [0], columns=1, title="ground truth")
    assert isinstance(grid, Figure) and grid.axes[0].get_title() == "image id 7" and grid.axes[0].patches
    assert {text.get_text() for text in grid.axes[0].texts} == {"cat"}

    class Detector(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [0.0, 0.0, 4.0, 4.0]]),
                     "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.1])}]

    side_by_side = report.predictions_vs_truth({"model": Detector()}, dataset, [0], label_map)
    truth, predicted = side_by_side.axes
    assert truth.get_title() == "ground truth" and predicted.get_title() == "model"
    assert {text.get_text() for text in predicted.texts} == {"dog 0.90"}  # the 0.1 score is under the threshold


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
