"""The console script: exit codes and messages instead of tracebacks."""

from __future__ import annotations

import json

import pytest

from compresskit.cli import main
from compresskit.models import shipped_checkpoint


def test_data_embedded_writes_the_coco_layout(tmp_path, capsys):
    assert main(["data", "embedded", "--out", str(tmp_path), "--train-images", "3", "--val-images", "2"]) == 0
    assert json.loads((tmp_path / "annotations/instances_val.json").read_text())["images"][1]["id"] == 2
    assert "ready" in capsys.readouterr().out


def test_data_check_reports_problems_without_traceback(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "missing.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, -3, 4]}],
        "categories": [{"id": 1, "name": "a"}]}))
    assert main(["data", "check", str(tmp_path / "bad.json"), "--images", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "missing.jpg" in out and "annotation id=1" in out and "Traceback" not in out


def test_data_check_passes_the_real_coco_fixture(coco_tiny, capsys):
    code = main(["data", "check", str(coco_tiny / "annotations/instances_train2017.json"),
                 "--images", str(coco_tiny / "train2017")])
    assert code == 0, capsys.readouterr().out


def test_offline_coco_download_is_one_clear_message(tmp_path, capsys):
    code = main(["data", "coco", "--out", str(tmp_path / "subset"), "--split", "val2017", "--images", "2",
                 "--annotations-url", "http://127.0.0.1:9/annotations_trainval2017.zip"])
    err = capsys.readouterr().err
    assert code == 2 and "offline" in err.lower() and "Traceback" not in err
    assert not (tmp_path / "subset").exists()


def test_evaluate_prints_and_writes_metrics(tiny_embedded, tmp_path, capsys):
    if not shipped_checkpoint("student").exists():
        pytest.skip("no shipped student checkpoint")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--preset", "student", "--data", str(tiny_embedded), "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert {"map", "map50", "map_small", "map_medium", "map_large", "params", "macs"} <= set(written)
    assert written["images"] == 8
