"""Tests for `compresskit data check`: each kind of broken dataset is reported once, by name, without a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from compresskit.data.check import CheckReport, Problem, check_dataset, main_check
from compresskit.errors import DatasetError

IMAGE_W, IMAGE_H = 128, 112  # big enough for a "large" (>96²) box
# (category_id, [x, y, w, h]) per image: one small, one medium, one large box, on non-contiguous category ids.
BOXES = [(3, [2, 2, 10, 10]), (7, [20, 30, 40, 40]), (3, [10, 5, 100, 100])]


def make_dataset(root: Path, n_images: int = 3) -> tuple[Path, Path, dict]:
    """Write ``n_images`` small JPEGs and a matching COCO json; return (json path, images dir, json data)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(n_images):
        name = f"img{index}.jpg"
        Image.new("RGB", (IMAGE_W, IMAGE_H), color=(40 * index, 120, 200)).save(images_dir / name, quality=90)
        images.append({"id": index + 1, "file_name": name, "width": IMAGE_W, "height": IMAGE_H})
        for category_id, bbox in BOXES:
            annotations.append({"id": 100 + len(annotations), "image_id": index + 1, "category_id": category_id,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    annotations[-1]["iscrowd"] = 1
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]}
    annotation_file = root / "instances.json"
    write_json(annotation_file, data)
    return annotation_file, images_dir, data


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1))


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path, dict]:
    return make_dataset(tmp_path)


def only_kind(annotation_file: Path, images_dir: Path, kind: str, capsys, *, severity: str = "error") -> list[Problem]:
    """Assert the dataset has problems of exactly one kind and that main_check reports them cleanly, on stderr."""
    report = check_dataset(annotation_file, images_dir, progress=False)
    assert {p.kind for p in report.problems} == {kind}, report.format_problems()
    assert {p.severity for p in report.problems} == {severity}
    capsys.readouterr()
    code = main_check(annotation_file, images_dir, progress=False)
    out = capsys.readouterr()
    assert code == (1 if severity == "error" else 0)
    assert "Traceback" not in out.out + out.err
    for problem in report.problems:
        assert str(problem) in out.err and str(problem) not in out.out
        assert "\n" not in str(problem) and " — fix: " in str(problem)
    if severity == "error":  # nothing on stdout: a script reading it never mistakes a broken dataset for a summary
        assert out.out == "" and "error(s)" in out.err
    else:
        assert out.out.rstrip().endswith(f"OK with {len(report.problems)} warning(s)") and "images:" in out.out
    return report.problems


def test_clean_dataset_passes_with_right_summary(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    report = check_dataset(annotation_file, images_dir, progress=False)
    assert report.ok and report.problems == []
    s = report.summary
    assert (s["images"], s["annotations"], s["categories"], s["crowd"]) == (3, 9, 2, 1)
    assert (s["small"], s["medium"], s["large"]) == (3, 3, 3)
    assert s["per_category"] == {3: 6, 7: 3}
    text = report.format_summary()
    assert "images: 3" in text and "annotations: 9" in text and "crowd annotations: 1" in text
    assert "car 6" in text and "train 3" in text
    assert main_check(annotation_file, images_dir, progress=False) == 0
    out = capsys.readouterr()
    assert out.out.rstrip().endswith("OK") and "small (<32²) 3" in out.out
    assert out.err == ""


def test_area_buckets_use_the_annotation_area(dataset):
    annotation_file, images_dir, data = dataset
    data["annotations"][0]["area"] = 32**2  # COCO's medium bucket starts at exactly 32²
    data["annotations"][1]["area"] = 96**2
    write_json(annotation_file, data)
    s = check_dataset(annotation_file, images_dir, progress=False).summary
    assert (s["small"], s["medium"], s["large"]) == (2, 3, 4)


def test_coco_source_passes_with_its_own_counts(coco_tiny):
    annotation_file = coco_tiny / "annotations" / "instances_train2017.json"
    source = json.loads(annotation_file.read_text())
    # file_name there is a bare "000000005802.jpg", so images live in train2017/ as in an official install.
    report = check_dataset(annotation_file, coco_tiny / "train2017", progress=False)
    assert report.ok, report.format_problems()
    s = report.summary
    assert (s["images"], s["annotations"], s["categories"]) == tuple(
        len(source[key]) for key in ("images", "annotations", "categories"))
    assert s["crowd"] == sum(1 for ann in source["annotations"] if ann["iscrowd"]) >= 1
    assert sum(s[k] for k in ("small", "medium", "large")) == s["annotations"]
    assert s["per_category"] == {c["id"]: sum(1 for a in source["annotations"] if a["category_id"] == c["id"])
                                 for c in source["categories"]}


def test_unreadable_annotation_file(tmp_path, capsys):
    (problem,) = only_kind(tmp_path / "nope.json", tmp_path, "unreadable_file", capsys)
    assert problem.file == str(tmp_path / "nope.json") and problem.record == "-"


def test_zero_byte_annotation_file(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    annotation_file.write_bytes(b"")
    (problem,) = only_kind(annotation_file, images_dir, "invalid_json", capsys)
    assert "empty" in problem.what


def test_invalid_json_names_the_line(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    annotation_file.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    (problem,) = only_kind(annotation_file, images_dir, "invalid_json", capsys)
    assert "line 3, column 19: expecting value" in problem.what and problem.file == str(annotation_file)
    assert "ends early" not in str(problem)  # a syntax error inside the file is not a truncation


@pytest.mark.parametrize(("cut_after", "where", "inside"), [
    # '   "file_name": "img' ends line 5: the text stops inside the string opened at column 17
    ('"img', "line 5, column 21", ", inside a string opened at line 5, column 17"),
    # '  },' ends line 8, after the first image: the text stops between values
    ("},", "line 8, column 5", ""),
])
def test_truncated_json_is_a_complete_actionable_message(dataset, capsys, cut_after, where, inside):
    annotation_file, images_dir, _ = dataset
    text = annotation_file.read_text()
    annotation_file.write_text(text[: text.index(cut_after) + len(cut_after)])
    (problem,) = only_kind(annotation_file, images_dir, "invalid_json", capsys)
    assert problem.what == f"instances.json is incomplete JSON: it stops at {where}{inside}"
    assert problem.fix == "the file ends early: was the download or export interrupted? re-export or re-download it"


def test_top_level_not_an_object(dataset, capsys):
    annotation_file, images_dir, data = dataset
    write_json(annotation_file, data["images"])
    only_kind(annotation_file, images_dir, "not_object", capsys)


def test_missing_top_level_key(dataset, capsys):
    annotation_file, images_dir, data = dataset
    del data["categories"]
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "missing_key", capsys)
    assert "'categories'" in problem.what and problem.record == "-"


@pytest.mark.parametrize(("section", "index", "key", "record"), [
    ("images", 1, "width", "image id=2 (file_name=img1.jpg)"),
    ("images", 0, "file_name", "image id=1"),
    ("annotations", 4, "bbox", "annotation id=104"),
    ("annotations", 0, "category_id", "annotation id=100"),
    ("categories", 1, "name", "category id=7"),
])
def test_missing_record_key(dataset, capsys, section, index, key, record):
    annotation_file, images_dir, data = dataset
    del data[section][index][key]
    write_json(annotation_file, data)
    # One problem: annotations of the incomplete record are not also reported as pointing to an unknown id.
    (problem,) = only_kind(annotation_file, images_dir, "missing_key", capsys)
    assert problem.record == record and key in problem.what


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], [1, 2, float("nan"), 4], [1, 2, float("inf"), 4], None])
def test_bbox_wrong_type(dataset, capsys, bbox):
    annotation_file, images_dir, data = dataset
    data["annotations"][2]["bbox"] = bbox
    write_json(annotation_file, data)  # json.dumps writes NaN/Infinity, which json.loads accepts
    (problem,) = only_kind(annotation_file, images_dir, "wrong_type", capsys)
    assert problem.record == "annotation id=102" and "bbox" in problem.what


def test_wrong_type_ids_and_sizes(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["annotations"][0]["category_id"] = [3]
    data["images"][2]["height"] = "112"
    data["annotations"][5]["area"] = "big"
    write_json(annotation_file, data)
    problems = only_kind(annotation_file, images_dir, "wrong_type", capsys)
    assert {p.record for p in problems} == {"annotation id=100", "image id=3 (file_name=img2.jpg)", "annotation id=105"}


def test_image_missing_on_disk(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    (images_dir / "img1.jpg").unlink()
    (problem,) = only_kind(annotation_file, images_dir, "missing_image", capsys)
    assert problem.record == "image id=2 (file_name=img1.jpg)" and str(images_dir / "img1.jpg") in problem.what


def _nest_images(annotation_file: Path, images_dir: Path, data: dict, folder: str) -> Path:
    """Move the images to ``images_dir/folder/`` and prefix every file_name with ``folder/``; returns the folder."""
    nested = images_dir / folder
    nested.mkdir()
    for image in data["images"]:
        (images_dir / image["file_name"]).rename(nested / image["file_name"])
        image["file_name"] = f"{folder}/{image['file_name']}"
    write_json(annotation_file, data)
    return nested


def _wrong_images_folder(annotation_file: Path, wrong: Path, images: int, hint: str, capsys) -> list[str]:
    """Check against the ``wrong`` images folder: every image missing, one ``hint``; returns main_check's stderr."""
    report = check_dataset(annotation_file, wrong, progress=False)
    assert [p.kind for p in report.problems] == ["missing_image"] * images
    assert report.hints == [hint]
    capsys.readouterr()
    assert main_check(annotation_file, wrong, progress=False) == 1
    err = capsys.readouterr().err.splitlines()
    # One example of the missing images, the count of the rest, the hint, the closing count.
    assert err[1:] == [f"... and {images - 1} more 'missing_image' problems like it (the hint below says why)",
                       f"hint: {hint}", err[-1]] and err[-1].startswith(f"{images} error(s)")
    with pytest.raises(DatasetError, match=re.escape(hint)):
        report.raise_for_errors()
    return err


def test_folder_named_twice_gets_one_hint(dataset, capsys):
    annotation_file, images_dir, data = dataset
    nested = _nest_images(annotation_file, images_dir, data, folder="val")  # file_name "val/img0.jpg"
    assert check_dataset(annotation_file, images_dir, progress=False).ok  # relative to the right folder: clean
    # --images .../images/val makes every path .../images/val/val/img0.jpg
    _wrong_images_folder(annotation_file, nested, 3, f"3 of the 3 missing images exist under {images_dir}: the "
                         f"file_name entries already start with 'val/' (e.g. val/img0.jpg), so pass --images "
                         f"{images_dir} instead of --images {nested}", capsys)


def test_the_folder_above_the_images_gets_one_summary_line_not_one_per_image(tmp_path, capsys):
    annotation_file, images_dir, _ = make_dataset(tmp_path, n_images=60)  # an export: images/ beside the json
    # --images of the export, not of its images/ folder
    _wrong_images_folder(annotation_file, tmp_path, 60, f"60 of the 60 missing images exist under {images_dir}: "
                         f"the file_name entries (e.g. img0.jpg) are relative to that folder, so pass --images "
                         f"{images_dir} instead of --images {tmp_path}", capsys)


def test_a_problem_of_the_whole_file_names_no_record(tmp_path):
    annotation_file, _, _ = make_dataset(tmp_path)
    report = check_dataset(annotation_file, tmp_path / "nowhere", progress=False)
    assert str(report.problems[0]).startswith(f"{annotation_file}: images folder ")  # no stray "-:" record


def test_no_hint_when_the_folder_above_does_not_explain_the_missing_files(dataset):
    annotation_file, images_dir, data = dataset
    nested = _nest_images(annotation_file, images_dir, data, folder="val")
    for name in ("img0.jpg", "img1.jpg"):
        (nested / name).unlink()  # gone everywhere: only one of the three missing files is in the folder above
    report = check_dataset(annotation_file, nested, progress=False)
    assert [p.kind for p in report.problems] == ["missing_image"] * 3 and report.hints == []


def test_images_folder_missing_is_one_problem(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    (problem,) = only_kind(annotation_file, images_dir.parent / "imgs", "missing_image", capsys)
    assert problem.record == "-" and "imgs" in problem.what


def test_truncated_jpeg(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    path = images_dir / "img2.jpg"
    Image.effect_noise((IMAGE_W, IMAGE_H), 64).convert("RGB").save(path, quality=95)  # noise: a long scan to cut
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (problem,) = only_kind(annotation_file, images_dir, "corrupt_image", capsys)
    assert problem.file == str(path) and problem.record == "image id=3 (file_name=img2.jpg)"
    assert "truncated" in problem.what


def test_text_file_named_jpg(dataset, capsys):
    annotation_file, images_dir, _ = dataset
    (images_dir / "img0.jpg").write_text("<html>404 Not Found</html>")
    (problem,) = only_kind(annotation_file, images_dir, "corrupt_image", capsys)
    assert problem.file == str(images_dir / "img0.jpg") and problem.record.startswith("image id=1 ")


@pytest.mark.parametrize(("mode", "suffix"), [("CMYK", ".jpg"), ("L", ".jpg"), ("P", ".png"), ("RGBA", ".png")])
def test_non_rgb_images_are_warnings(dataset, capsys, mode, suffix):
    annotation_file, images_dir, data = dataset
    name = f"odd{suffix}"
    Image.new("RGB", (IMAGE_W, IMAGE_H), color=(200, 30, 30)).convert(mode).save(images_dir / name)
    data["images"][1]["file_name"] = name
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "non_rgb", capsys, severity="warning")
    assert mode in problem.what and problem.record == f"image id=2 (file_name={name})"
    assert str(problem).startswith(f"{images_dir / name}: image id=2 (file_name={name}): warning: ")


def test_image_size_differs_from_json(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["images"][0]["width"] = 200  # wider than the file, so every box is still inside
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "size_mismatch", capsys)
    assert problem.record == "image id=1 (file_name=img0.jpg)" and "128x112" in problem.what


def test_box_with_non_positive_size(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["annotations"][3]["bbox"] = [10, 5, 0, 8]
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "box_nonpositive", capsys)
    assert str(problem) == (f"{annotation_file}: annotation id=103: box [10, 5, 0, 8] has non-positive width or height"
                            " — fix: remove the annotation or give it a positive width and height")


def test_box_outside_image_beyond_tolerance(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["annotations"][1]["bbox"] = [100, 30, 40, 40]  # right edge at 140 in a 128-wide image
    data["annotations"][2]["bbox"] = [-0.5, 5, 128.9, 100]  # within the 1-pixel tolerance: fine
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "box_outside", capsys)
    assert problem.record == "annotation id=101" and "clip" in problem.fix


def test_annotation_for_unknown_image(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["annotations"][4]["image_id"] = 42
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "unknown_image", capsys)
    assert problem.record == "annotation id=104" and "42" in problem.what


def test_unknown_category(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["annotations"][5]["category_id"] = 99
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "unknown_category", capsys)
    assert problem.record == "annotation id=105" and "99" in problem.what


@pytest.mark.parametrize(("section", "record"), [
    ("images", "image id=1 (file_name=extra.jpg)"),
    ("annotations", "annotation id=100"),
    ("categories", "category id=3"),
])
def test_duplicate_ids(dataset, capsys, section, record):
    annotation_file, images_dir, data = dataset
    duplicate = dict(data[section][0])
    if section == "images":
        duplicate["file_name"] = "extra.jpg"
    if section == "categories":
        duplicate["name"] = "truck"
    data[section].append(duplicate)
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "duplicate_id", capsys)
    assert problem.record == record


def test_duplicate_file_names(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["images"][2]["file_name"] = "img0.jpg"
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "duplicate_file_name", capsys)
    assert problem.record == "image id=3 (file_name=img0.jpg)" and "id=1" in problem.what


@pytest.mark.parametrize("section", ["images", "annotations", "categories"])
def test_empty_dataset(dataset, capsys, section):
    annotation_file, images_dir, data = dataset
    data[section] = []
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "empty", capsys)
    assert section in problem.what


@pytest.mark.parametrize("iscrowd", [2, -1, "0", 0.5, True])
def test_bad_iscrowd(dataset, capsys, iscrowd):
    annotation_file, images_dir, data = dataset
    data["annotations"][6]["iscrowd"] = iscrowd
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "bad_iscrowd", capsys)
    assert problem.record == "annotation id=106"


def test_negative_area(dataset, capsys):
    annotation_file, images_dir, data = dataset
    data["annotations"][0]["area"] = -5
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "bad_area", capsys)
    assert problem.record == "annotation id=100"


def test_missing_area_is_a_warning_and_the_box_fills_in(dataset, capsys):
    annotation_file, images_dir, data = dataset
    del data["annotations"][2]["area"]  # a 100x100 box: still counted as large
    write_json(annotation_file, data)
    (problem,) = only_kind(annotation_file, images_dir, "missing_area", capsys, severity="warning")
    assert problem.record == "annotation id=102"
    assert check_dataset(annotation_file, images_dir, progress=False).summary["large"] == 3


def test_check_pixels_off_still_finds_missing_files(dataset):
    annotation_file, images_dir, _ = dataset
    (images_dir / "img0.jpg").write_text("not an image")
    (images_dir / "img1.jpg").unlink()
    report = check_dataset(annotation_file, images_dir, check_pixels=False, progress=False)
    assert [p.kind for p in report.problems] == ["missing_image"]


def test_many_problems_are_capped_per_kind(dataset):
    annotation_file, images_dir, data = dataset
    for index in range(120):
        data["annotations"].append({"id": 1000 + index, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 1],
                                    "area": 0})
    data["annotations"][0]["category_id"] = 99
    write_json(annotation_file, data)
    report = check_dataset(annotation_file, images_dir, progress=False)
    assert len(report.problems) == 121  # the report itself keeps everything
    lines = report.format_problems(limit=50).splitlines()
    assert len(lines) == 1 + 50 + 1
    assert lines[-1].startswith("... and 70 more 'box_nonpositive'")


def test_report_ok_allows_warnings():
    warning = Problem("a.json", "image id=1", "grayscale", "none", severity="warning")
    report = CheckReport(Path("a.json"), Path("."), [warning], {})
    assert report.ok and report.warnings == [warning] and report.errors == []
    assert "images: 0" in report.format_summary()  # an empty summary (e.g. unreadable json) still formats
    report.raise_for_errors()  # warnings only: nothing to raise


def test_raise_for_errors_uses_dataset_error(dataset):
    annotation_file, images_dir, data = dataset
    data["annotations"][0]["category_id"] = 99
    write_json(annotation_file, data)
    with pytest.raises(DatasetError, match="annotation id=100: category_id 99"):
        check_dataset(annotation_file, images_dir, progress=False).raise_for_errors()
