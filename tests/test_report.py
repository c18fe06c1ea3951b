"""Results records (docs/method.md, "Results records"): validation, merge-by-id, atomic and locked writes, comparisons, tables, figures."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from compresskit import measure, report  # noqa: E402
from compresskit.errors import CompressKitError  # noqa: E402

ENVIRONMENT = {"python": "3", "torch": "2", "torchvision": "0", "torchao": "0", "onnxruntime": "1",
               "torch_pruning": "1", "cpu": "test cpu", "isa": ["avx2"], "threads": 2}


def record(record_id: str, *, technique: str = "baseline", baseline: str | None = None, map_value: float = 0.5,
           size: tuple[int, int] = (1000, 900), macs: int = 100, median: float = 10.0, p90: float | None = None,
           paired: dict | None = None) -> dict:
    latency = measure.Latency(median_ms=median, p90_ms=p90 or median * 1.1, runs=30, threads=2, batch=1)
    return report.make_record(
        id=record_id, lesson="99_test", technique=technique, model="teacher", runtime="torch-eager",
        metrics={"map": map_value, "map50": 0.8, "unrelated": 1.0}, baseline=baseline, profile="embedded",
        params=10, nonzero_params=8, macs=macs, size=size, latency=latency.as_record((64, 64)),
        paired_latency=paired, config={"path": Path("/tmp/x"), "ratio": 0.5})


def paired_entry(baseline: str, speedup: float = 1.93, low: float = 1.85, high: float = 2.01) -> dict:
    side = measure.Latency(median_ms=10.0, p90_ms=11.0, runs=30, threads=2, batch=1)
    result = measure.PairedLatency(speedup=speedup, low=low, high=high, pairs=30, threads=2, baseline=side,
                                   candidate=side)
    return result.as_record(baseline)


def ids(folder: Path) -> list[str]:
    return [r["id"] for r in report.read_results(folder)["records"]]


def test_make_record_has_exactly_the_contract_fields() -> None:
    made = record("t/base")
    assert tuple(made) == report.RECORD_FIELDS
    assert made["map"] == 0.5 and made["map50"] == 0.8 and made["map75"] is None
    assert (made["size_bytes"], made["size_gzip_bytes"]) == (1000, 900)
    info = report.make_record(id="t/x", lesson="l", technique="fp16", model="m", runtime="onnxruntime",
                              metrics=None, size=measure.SizeInfo(5, 4), profile="coco")
    assert (info["size_bytes"], info["size_gzip_bytes"], info["profile"], info["map"]) == (5, 4, "coco", None)


def test_dataclass_config_is_stored_as_fields(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class PruneConfig:
        ratio: float = 0.3
        ignored: tuple = ("head",)

    made = report.make_record(id="t", lesson="l", profile="embedded", technique="structured_pruning", model="m",
                              runtime="torch-eager", metrics={}, config=PruneConfig())
    assert made["config"] == {"ratio": 0.3, "ignored": ("head",)}
    report.write_records([made], tmp_path, environment=ENVIRONMENT)
    assert report.read_results(tmp_path)["records"][0]["config"] == {"ratio": 0.3, "ignored": ["head"]}


def test_profile_is_required_and_validated(monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "coco")  # the environment is no longer consulted
    arguments = dict(id="t", lesson="l", technique="baseline", model="m", runtime="torch-eager", metrics={})
    with pytest.raises(TypeError, match="profile"):
        report.make_record(**arguments)
    assert report.make_record(**arguments, profile="embedded")["profile"] == "embedded"
    with pytest.raises(CompressKitError, match="unknown profile 'COCO'.*embedded, coco"):
        report.make_record(**arguments, profile="COCO")


@pytest.mark.parametrize("changes, message", [
    ({"technique": "magic"}, "unknown technique 'magic'.*baseline, unstructured_pruning"),
    ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'.*torch-eager"),
    ({"baseline": {"id": "x"}}, "must be a record id"),
    ({"latency": {"median": 1.0}}, "lacks"),
    ({"paired_latency": paired_entry("base")}, "measured against 'base' but the record's baseline is None"),
    ({"baseline": "base", "paired_latency": paired_entry("other")}, "against 'other'.*baseline is 'base'"),
    ({"baseline": "base", "paired_latency": {"baseline": "base", "speedup": 2.0}}, r"lacks \['interval', 'pairs'\]"),
    ({"baseline": "base", "paired_latency": dict(paired_entry("base"), interval=[2.0, 1.0])}, "low <= high"),
])
def test_make_record_rejects_bad_values(changes: dict, message: str) -> None:
    arguments = dict(id="t/x", lesson="l", profile="embedded", technique="baseline", model="m",
                     runtime="torch-eager", metrics={})
    arguments.update(changes)
    with pytest.raises(report.ResultsFileError, match=message):
        report.make_record(**arguments)


def test_append_then_replace_by_id_keeps_others(tmp_path: Path) -> None:
    path = report.write_records([record("a"), record("b"), record("c")], tmp_path, environment=ENVIRONMENT)
    assert path == tmp_path / "results.json"
    report.write_records([record("b", map_value=0.9), record("d")], tmp_path, environment=ENVIRONMENT)
    document = report.read_results(path)
    assert document["schema"] == 1 and document["environment"] == ENVIRONMENT
    assert [r["id"] for r in document["records"]] == ["a", "b", "c", "d"]
    assert [r["map"] for r in document["records"]] == [0.5, 0.9, 0.5, 0.5]
    assert document["records"][0]["config"] == {"path": "/tmp/x", "ratio": 0.5}
    assert report.read_results(tmp_path / "results.json") == report.read_results(tmp_path)


def test_default_folder_and_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSKIT_REPORTS", str(tmp_path / "runs"))
    path = report.write_records([record("a")])
    assert path == tmp_path / "runs" / "results.json"
    assert set(report.read_results(path)["environment"]) >= set(ENVIRONMENT)


def test_missing_file_reads_as_empty_document(tmp_path: Path) -> None:
    assert report.read_results(tmp_path / "nowhere") == {"schema": 1, "environment": {}, "records": []}


def test_failed_rename_leaves_original_and_no_temp_files(tmp_path: Path, monkeypatch) -> None:
    path = report.write_records([record("a")], tmp_path, environment=ENVIRONMENT)
    before = path.read_bytes()

    def failing_replace(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        report.write_records([record("b")], tmp_path, environment=ENVIRONMENT)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file, no lock file


@pytest.mark.parametrize("content", [b"{not json", b'{"schema": 1, "records": {}}', b'{"schema": 7, "records": []}',
                                     b'{"schema": 1, "records": [{"map": 1}]}', b"\xff\xfe\x00"])
def test_corrupt_file_raises_and_is_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="results.json.*left untouched"):
        report.read_results(tmp_path)
    with pytest.raises(ValueError, match="left untouched"):
        report.write_records([record("a")], tmp_path, environment=ENVIRONMENT)
    assert path.read_bytes() == content


def test_baseline_must_be_in_batch_or_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="baseline records not found.*'q': 'base'"):
        report.write_records([record("q", technique="static_ptq", baseline="base")], tmp_path,
                             environment=ENVIRONMENT)
    assert not (tmp_path / "results.json").exists()
    report.write_records([record("base"), record("q", technique="static_ptq", baseline="base")], tmp_path,
                         environment=ENVIRONMENT)
    report.write_records([record("q2", technique="fp16", baseline="base")], tmp_path, environment=ENVIRONMENT)
    assert ids(tmp_path) == ["base", "q", "q2"]


def test_hand_built_record_is_validated(tmp_path: Path) -> None:
    bad = dict(record("a"), technique="pruning")
    with pytest.raises(ValueError, match="unknown technique"):
        report.write_records([bad], tmp_path, environment=ENVIRONMENT)
    incomplete = {"id": "a", "technique": "baseline"}
    with pytest.raises(ValueError, match="lacks fields"):
        report.write_records([incomplete], tmp_path, environment=ENVIRONMENT)


def _writer(folder: str, prefix: str, count: int) -> None:
    for index in range(count):
        report.write_records([record(f"{prefix}/{index}")], folder, environment=ENVIRONMENT)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    # fork keeps the test fast (no torch re-import); the children only touch JSON files, never torch.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    workers = [context.Process(target=_writer, args=(str(tmp_path), prefix, 25)) for prefix in ("x", "y")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    written = ids(tmp_path)
    assert sorted(written) == sorted(f"{p}/{i}" for p in ("x", "y") for i in range(25))
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # the last writer removed the lock file


def test_compare_ratios() -> None:
    base = record("base", map_value=0.60, size=(4000, 3600), macs=1000, median=20.0)
    small = record("int8", technique="static_ptq", baseline="base", map_value=0.585, size=(1000, 800), macs=250,
                   median=8.0)
    ratios = report.compare(small, base)
    assert ratios["size_ratio"] == pytest.approx(4.0)
    assert ratios["gzip_size_ratio"] == pytest.approx(4.5)
    assert ratios["macs_ratio"] == pytest.approx(4.0)
    assert ratios["latency_speedup"] == pytest.approx(2.5)  # no paired run: the ratio of medians
    assert ratios["latency_interval"] is None and ratios["latency_noisy"] is False
    assert ratios["map_drop_points"] == pytest.approx(1.5)
    jumpy = record("jumpy", technique="fp16", baseline="base", median=8.0, p90=16.0)
    assert report.compare(jumpy, base)["latency_noisy"] is True
    empty = report.make_record(id="e", lesson="l", profile="embedded", technique="fp16", model="m",
                               runtime="torch-eager", metrics=None)
    assert set(report.compare(empty, base).values()) == {None}
    with pytest.raises(CompressKitError, match="measured against 'base'"):
        report.compare(small, record("other"))


def test_records_frame_and_table(tmp_path: Path) -> None:
    records = [record("base"), record("p", technique="structured_pruning", baseline="base", median=5.0)]
    frame = report.records_frame({"records": records})
    assert list(frame["id"]) == ["base", "p"] and list(frame["latency_median_ms"]) == [10.0, 5.0]
    assert set(report.RECORD_FIELDS) <= set(frame.columns)
    table = report.format_records_table({"records": records})
    assert table == report.format_table(records)
    assert "structured_pruning" in table.splitlines()[3]


def _points(figure) -> int:
    return sum(len(collection.get_offsets()) for axes in figure.axes for collection in axes.collections)


def test_plot_pareto_points_colours_and_lines() -> None:
    from matplotlib.figure import Figure

    records = [record("base"), record("int8", technique="static_ptq", baseline="base", median=4.0),
               record("fp16", technique="fp16", baseline="base", median=8.0),
               report.make_record(id="nolat", lesson="l", profile="embedded", technique="qat", model="m",
                                  runtime="torch-eager", metrics={"map": 0.4})]
    figure = report.plot_pareto(records, x="latency", y="map")
    assert isinstance(figure, Figure)
    assert _points(figure) == 3  # the record without latency is left out
    axes = figure.axes[0]
    assert len(axes.collections) == 3  # one scatter per technique (colour) and runtime (marker)
    assert len(axes.lines) == 3  # dashed lines to the baseline, and the Pareto frontier's step line
    assert {text.get_text() for text in axes.texts} == {"base", "int8", "fp16"}
    assert _points(report.plot_pareto(records, x="size", baseline_lines=False)) == 3
    assert _points(report.plot_pareto(records, x="macs")) == 3
    with pytest.raises(CompressKitError, match="x must be one of"):
        report.plot_pareto(records, x="energy")


def test_plot_curve_overlays_on_given_axes() -> None:
    figure = report.plot_curve([0.0, 0.5, 0.9], [0.6, 0.55, 0.2], "sparsity", "mAP", label="global")
    report.plot_curve([0.0, 0.5], [0.6, 0.4], "sparsity", "mAP", label="local", ax=figure.axes[0])
    assert len(figure.axes[0].lines) == 2
    assert figure.axes[0].get_xlabel() == "sparsity"


def test_metric_names_come_from_the_engine() -> None:
    from compresskit.engine import METRIC_NAMES

    metric_fields = [field for field in report.RECORD_FIELDS if field.startswith("map")]
    assert tuple(metric_fields) == METRIC_NAMES
    assert not hasattr(report, "METRIC_KEYS")


def test_paired_latency_round_trips_and_drives_compare(tmp_path: Path) -> None:
    base = record("base", median=20.0)
    fast = record("int8", technique="static_ptq", baseline="base", median=8.0, paired=paired_entry("base"))
    assert fast["paired_latency"]["interval"] == [1.85, 2.01] and fast["paired_latency"]["noisy"] is False
    report.write_records([base, fast], tmp_path, environment=ENVIRONMENT)
    stored = {r["id"]: r for r in report.read_results(tmp_path)["records"]}
    assert stored["int8"]["paired_latency"] == fast["paired_latency"] and stored["base"]["paired_latency"] is None
    ratios = report.compare(stored["int8"], stored["base"])
    assert ratios["latency_speedup"] == pytest.approx(1.93)  # the paired ratio, not 20 / 8 = 2.5
    assert ratios["latency_interval"] == [1.85, 2.01] and ratios["latency_noisy"] is False
    noisy = record("n", technique="fp16", baseline="base", paired=paired_entry("base", 1.3, 0.9, 1.5))
    assert report.compare(noisy, base)["latency_noisy"] is True
    hand_built = dict(paired_entry("base", 1.3, 0.9, 1.5))
    del hand_built["noisy"]
    assert record("h", technique="fp16", baseline="base", paired=hand_built)["paired_latency"]["noisy"] is True


def test_file_written_before_paired_latency_still_reads_and_merges(tmp_path: Path) -> None:
    old = {key: value for key, value in record("old").items() if key != "paired_latency"}
    document = {"schema": 1, "environment": {}, "records": [old]}
    (tmp_path / "results.json").write_text(json.dumps(document, default=str))
    (stored,) = report.read_results(tmp_path)["records"]
    assert stored["paired_latency"] is None and stored["map"] == 0.5
    report.write_records([stored], tmp_path, environment=ENVIRONMENT)  # a record read back is written back
    report.write_records([old], tmp_path, environment=ENVIRONMENT)  # and a hand-kept old one too
    report.write_records([record("new", technique="fp16", baseline="old", paired=paired_entry("old"))], tmp_path,
                         environment=ENVIRONMENT)
    assert ids(tmp_path) == ["old", "new"]
    assert report.compare(report.read_results(tmp_path)["records"][1], stored)["latency_speedup"] == 1.93


def test_no_lock_file_left_after_writes(tmp_path: Path) -> None:
    for index in range(3):
        report.write_records([record(f"r{index}")], tmp_path, environment=ENVIRONMENT)
    with pytest.raises(CompressKitError, match="baseline records not found"):
        report.write_records([record("orphan", technique="fp16", baseline="missing")], tmp_path,
                             environment=ENVIRONMENT)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert not list(tmp_path.glob("*.lock"))


def test_format_table_units_and_missing_values() -> None:
    records = [
        {"id": "a/base", "technique": "baseline", "runtime": "torch-eager", "map": 0.6123, "params": 2_500_000,
         "nonzero_params": 2_500_000, "macs": 1_230_000_000, "size_bytes": 10_000_000,
         "size_gzip_bytes": 9_000_000, "latency_ms": {"median": 21.3456, "p90": 22.0}},
        {"id": "a/other", "technique": "fp16", "runtime": "onnxruntime"},
    ]
    lines = report.format_table(records).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    headers = [cell.strip() for cell in lines[0].split("  ") if cell.strip()]
    assert headers[3:] == ["mAP x100", "params M", "nonzero M", "MACs G", "size MB", "gzip MB", "latency ms",
                           "speedup"]
    assert lines[2].split() == ["a/base", "baseline", "torch-eager", "61.2", "2.50", "2.50", "1.23", "10.00",
                                "9.00", "21.35", "-"]
    assert lines[3].split()[3:] == ["-"] * 8
    assert len({len(line) for line in lines[:3]}) == 1  # fixed width
    assert "~" not in "\n".join(lines)  # nothing noisy, no legend
    with pytest.raises(CompressKitError, match="unknown table columns"):
        report.format_table(records, columns=("id", "nope"))


def test_table_shows_paired_interval_and_marks_noise() -> None:
    records = [record("base", median=33.52, p90=60.0),  # p90 / median = 1.8: noisy
               record("int8", technique="static_ptq", baseline="base", median=17.0, paired=paired_entry("base")),
               record("fp16", technique="fp16", baseline="base", median=30.0,
                      paired=paired_entry("base", 1.3, 0.9, 1.5))]
    lines = report.format_records_table(records, columns=("id", "latency", "speedup")).splitlines()
    assert lines[2].split() == ["base", "33.52", "~", "-"]
    assert lines[3].split() == ["int8", "17.00", "1.93x", "[1.85-2.01]"]
    assert lines[4].split() == ["fp16", "30.00", "1.30x", "[0.90-1.50]", "~"]
    assert lines[2].index("33.52") == lines[3].index("17.00")  # the mark does not shift the digits
    assert lines[-1] == "~ noisy: p90/median > 1.5 or a wide paired interval; rerun on an idle machine"
    assert "speedup" in report.DEFAULT_COLUMNS and "1.93x [1.85-2.01]" in report.format_records_table(records)


def test_table_says_which_maps_come_from_a_slice_or_a_training_record() -> None:
    records = [record("full"), record("slice"), record("trained")]
    records[0]["config"]["map_source"] = "whole val split (500 images)"
    records[1]["config"]["map_source"] = "val slice (first 100 of 500 images)"
    records[2]["config"]["map_source"] = "training record (checkpoint not shipped)"
    lines = report.format_records_table(records, columns=("id", "map")).splitlines()
    assert [line.split() for line in lines[2:5]] == [["full", "50.0"], ["slice", "50.0", "s"],
                                                     ["trained", "50.0", "t"]]
    assert lines[5].startswith("s mAP on a slice of the val split") and lines[6].startswith("t mAP from the training")
    assert len(lines) == 7  # no noise legend: no timing is shown
    markdown = report.format_markdown_table(records[:2], columns=("id", "map"))
    assert "| slice | 50.0 s |" in markdown and "training run" not in markdown


def test_pareto_draws_a_noisy_timing_hollow_and_keeps_it_off_the_frontier() -> None:
    records = [record("base", median=10.0, map_value=0.5),
               record("fast", technique="static_ptq", baseline="base", median=5.0, map_value=0.6,
                      paired=paired_entry("base", 2.0, 0.9, 3.5))]  # the interval holds 1.0: noisy
    axes = report.plot_pareto(records, x="latency").axes[0]
    fast = next(collection for collection in axes.collections
                if tuple(collection.get_offsets()[0]) == (5.0, 60.0))
    assert tuple(fast.get_facecolor()[0][:3]) == (1.0, 1.0, 1.0)  # hollow
    frontier = [line for line in axes.lines if line.get_drawstyle() == "steps-post"]
    assert list(frontier[0].get_xdata()) == [10.0]  # only the trustworthy point
    assert any("noisy timing" in text.get_text() for legend in axes.figure.legends for text in legend.get_texts())
    # On the size axis the timing does not matter: both points count.
    size_axes = report.plot_pareto(records, x="size").axes[0]
    assert all(collection.get_facecolor()[0][:3].tolist() != [1.0, 1.0, 1.0] for collection in size_axes.collections)


def test_metric_bars_group_by_size_bucket() -> None:
    base = dict(record("base"), map=0.6, map_small=0.3, map_medium=0.62, map_large=0.8)
    student = dict(record("student"), map=0.5, map_small=None, map_medium=0.5, map_large=0.7)
    figure = report.metric_bars({"records": [base, student]}, title="AP by size")
    axes = figure.axes[0]
    heights = sorted(round(patch.get_height(), 1) for patch in axes.patches if patch.get_height() > 0)
    assert heights == [30.0, 50.0, 50.0, 60.0, 62.0, 70.0, 80.0]  # the missing small-object AP is left out
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["AP (all sizes)", "small", "medium", "large"]
    assert axes.get_ylabel() == "COCO AP x100" and axes.get_title() == "AP by size"
    assert {text.get_text() for text in axes.get_legend().get_texts()} == {"base", "student"}
    with pytest.raises(CompressKitError, match="unknown metrics"):
        report.metric_bars([base], keys=("map", "recall"))
