"""Results records (DESIGN §5): validation, merge-by-id, atomic and locked writes, comparisons, figures."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from compresskit import measure, report  # noqa: E402

ENVIRONMENT = {"python": "3", "torch": "2", "torchvision": "0", "torchao": "0", "onnxruntime": "1",
               "torch_pruning": "1", "cpu": "test cpu", "isa": ["avx2"], "threads": 2}


def record(record_id: str, *, technique: str = "baseline", baseline: str | None = None, map_value: float = 0.5,
           size: tuple[int, int] = (1000, 900), macs: int = 100, median: float = 10.0) -> dict:
    return report.make_record(
        id=record_id, lesson="99_test", technique=technique, model="teacher", runtime="torch-eager",
        metrics={"map": map_value, "map50": 0.8, "unrelated": 1.0}, baseline=baseline, profile="embedded",
        params=10, nonzero_params=8, macs=macs, size=size,
        latency={"median": median, "p90": median * 1.1, "runs": 30, "batch": 1, "threads": 2, "input": [64, 64]},
        config={"path": Path("/tmp/x"), "ratio": 0.5})


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

    made = report.make_record(id="t", lesson="l", technique="structured_pruning", model="m",
                              runtime="torch-eager", metrics={}, config=PruneConfig())
    assert made["config"] == {"ratio": 0.3, "ignored": ("head",)}
    report.write_records([made], tmp_path, environment=ENVIRONMENT)
    assert report.read_results(tmp_path)["records"][0]["config"] == {"ratio": 0.3, "ignored": ["head"]}


def test_profile_defaults_to_settings(monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "coco")
    made = report.make_record(id="t", lesson="l", technique="baseline", model="m", runtime="torch-eager",
                              metrics={})
    assert made["profile"] == "coco"


@pytest.mark.parametrize("changes, message", [
    ({"technique": "magic"}, "unknown technique 'magic'.*baseline, unstructured_pruning"),
    ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'.*torch-eager"),
    ({"baseline": {"id": "x"}}, "must be a record id"),
    ({"latency": {"median": 1.0}}, "lacks"),
])
def test_make_record_rejects_bad_values(changes: dict, message: str) -> None:
    arguments = dict(id="t/x", lesson="l", technique="baseline", model="m", runtime="torch-eager", metrics={})
    arguments.update(changes)
    with pytest.raises(ValueError, match=message):
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.json.lock"]


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


def test_compare_ratios() -> None:
    base = record("base", map_value=0.60, size=(4000, 3600), macs=1000, median=20.0)
    small = record("int8", technique="static_ptq", baseline="base", map_value=0.585, size=(1000, 800), macs=250,
                   median=8.0)
    ratios = report.compare(small, base)
    assert ratios["size_ratio"] == pytest.approx(4.0)
    assert ratios["gzip_size_ratio"] == pytest.approx(4.5)
    assert ratios["macs_ratio"] == pytest.approx(4.0)
    assert ratios["latency_speedup"] == pytest.approx(2.5)
    assert ratios["map_drop_points"] == pytest.approx(1.5)
    empty = report.make_record(id="e", lesson="l", technique="fp16", model="m", runtime="torch-eager",
                               metrics=None)
    assert set(report.compare(empty, base).values()) == {None}
    with pytest.raises(ValueError, match="measured against 'base'"):
        report.compare(small, record("other"))


def test_records_frame_and_table(tmp_path: Path) -> None:
    records = [record("base"), record("p", technique="structured_pruning", baseline="base", median=5.0)]
    frame = report.records_frame({"records": records})
    assert list(frame["id"]) == ["base", "p"] and list(frame["latency_median_ms"]) == [10.0, 5.0]
    assert set(report.RECORD_FIELDS) <= set(frame.columns)
    table = report.format_records_table(records)
    assert table == measure.format_table(records)
    assert "structured_pruning" in table.splitlines()[3]


def _points(figure) -> int:
    return sum(len(collection.get_offsets()) for axes in figure.axes for collection in axes.collections)


def test_plot_pareto_points_colours_and_lines() -> None:
    from matplotlib.figure import Figure

    records = [record("base"), record("int8", technique="static_ptq", baseline="base", median=4.0),
               record("fp16", technique="fp16", baseline="base", median=8.0),
               report.make_record(id="nolat", lesson="l", technique="qat", model="m", runtime="torch-eager",
                                  metrics={"map": 0.4})]
    figure = report.plot_pareto(records, x="latency", y="map")
    assert isinstance(figure, Figure)
    assert _points(figure) == 3  # the record without latency is left out
    axes = figure.axes[0]
    assert len(axes.collections) == 3  # one scatter (colour) per technique
    assert len(axes.lines) == 2  # dashed lines to the baseline
    assert {text.get_text() for text in axes.texts} == {"base", "int8", "fp16"}
    assert _points(report.plot_pareto(records, x="size", baseline_lines=False)) == 3
    assert _points(report.plot_pareto(records, x="macs")) == 3
    with pytest.raises(ValueError, match="x must be one of"):
        report.plot_pareto(records, x="energy")


def test_plot_curve_overlays_on_given_axes() -> None:
    figure = report.plot_curve([0.0, 0.5, 0.9], [0.6, 0.55, 0.2], "sparsity", "mAP", label="global")
    report.plot_curve([0.0, 0.5], [0.6, 0.4], "sparsity", "mAP", label="local", ax=figure.axes[0])
    assert len(figure.axes[0].lines) == 2
    assert figure.axes[0].get_xlabel() == "sparsity"
