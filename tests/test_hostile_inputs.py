"""Hostile and broken datasets: nothing is read or written outside the dataset's folders, every refusal is one
line naming the file, the record and the fix, and no input gives a traceback. Each form is tried through the
command line (``main`` returns the exit code) and through the library."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from compresskit.cli import main
from compresskit.data import CocoDetection, require_clean_layout
from compresskit.data import split as split_module
from compresskit.data.check import check_dataset
from compresskit.data.example_export import convert_to_rgb_
from compresskit.data.files import JsonFileError, parse_json_bytes
from compresskit.data.safe_paths import file_name_problem
from compresskit.data.split import SplitConfig, split_dataset
from compresskit.errors import DatasetError

SIZE = (64, 48)
NAMES = ("a.png", "b.png", "c.png", "d.png")


def write_png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", SIZE, color=(shade, 90, 160)).save(path)


def coco_document(names: tuple[str, ...]) -> dict:
    """One 20x20 box per image, alternating between two categories, so a split can put each in both halves."""
    return {"images": [{"id": i + 1, "file_name": name, "width": SIZE[0], "height": SIZE[1]}
                       for i, name in enumerate(names)],
            "annotations": [{"id": 10 + i, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [4, 4, 20, 20],
                             "area": 400, "iscrowd": 0} for i in range(len(names))],
            "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "tile"}]}


def make_export(root: Path, names: tuple[str, ...] = NAMES) -> tuple[Path, Path]:
    """A labelling-tool export: ``root/images/*.png`` and ``root/annotations.json``."""
    images = root / "images"
    for index, name in enumerate(names):
        write_png(images / name, 40 * index)
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(coco_document(names)))
    return annotations, images


def make_layout(root: Path) -> Path:
    """A kit-layout dataset (``annotations/instances_{train,val}.json``, ``train/``, ``val/``)."""
    for split, names in (("train", NAMES[:2]), ("val", NAMES[2:])):
        for index, name in enumerate(names):
            write_png(root / split / name, 60 * index)
        document = coco_document(tuple(f"{split}/{name}" for name in names))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return root


def set_file_name(annotation_file: Path, index: int, file_name: str) -> None:
    document = json.loads(annotation_file.read_text())
    document["images"][index]["file_name"] = file_name
    annotation_file.write_text(json.dumps(document))


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (files, folders and links), relative to it."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def message_lines(err: str) -> list[str]:
    """The lines of ``err`` without tqdm's progress bars."""
    return [line for line in err.splitlines() if line.strip() and "checking images" not in line]


def one_error_line(err: str, needle: str) -> str:
    """The single line of ``err`` that carries the message, after checking nothing else was said (progress
    bars aside) and no traceback was printed."""
    assert "Traceback" not in err
    lines = message_lines(err)
    assert len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ names that leave the folder
UNSAFE_NAMES = {
    "dotdot": ("../../secret.jpg", "leaves the images folder ('..')"),
    "dotdot_inside": ("sub/../../secret.jpg", "leaves the images folder ('..')"),
    "absolute": ("/some/where/x.jpg", "is an absolute path"),
    "nul": ("a.png\x00.jpg", "contains a NUL byte"),
    "backslash": ("..\\..\\secret.jpg", "contains a backslash"),
    "drive": ("C:/Windows/x.jpg", "is an absolute path"),
    "drive_relative": ("C:x.jpg", "is an absolute path"),
    "control": ("a\nb.png", "contains a control character"),
    "surrogate": ("a\ud800.png", "lone surrogate"),
    "too_long": ("x" * 300 + ".png", "longer than 255 bytes"),
}


@pytest.mark.parametrize("form", sorted(UNSAFE_NAMES))
def test_unsafe_file_name_is_one_problem_in_data_check(tmp_path, capsys, form):
    name, what = UNSAFE_NAMES[form]
    annotations, images = make_export(tmp_path / "export")
    set_file_name(annotations, 0, name)
    report = check_dataset(annotations, images, progress=False)
    assert [(p.kind, p.record.split(" ")[1]) for p in report.problems] == [("unsafe_file_name", "id=1")]
    assert what in report.problems[0].what and "fix: " in str(report.problems[0])
    capsys.readouterr()
    assert main(["data", "check", str(annotations), "--images", str(images)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    *problem_lines, tally = message_lines(err)  # the problem, then the count of errors
    assert len(problem_lines) == 1 and str(annotations) in problem_lines[0] and "image id=1" in problem_lines[0]
    assert what in problem_lines[0] and tally.startswith("1 error(s)")


@pytest.mark.parametrize("form", ["dotdot", "absolute", "backslash", "nul"])
def test_split_refuses_an_unsafe_name_and_writes_nothing(tmp_path, capsys, form):
    name = UNSAFE_NAMES[form][0]
    annotations, images = make_export(tmp_path / "t3")
    write_png(tmp_path / "secret.jpg", 7)
    if form == "absolute":
        name = str(tmp_path / "secret.jpg")
    set_file_name(annotations, 0, name)
    before = tree(tmp_path)
    out = tmp_path / "t3out" / "split"
    assert main(["data", "split", str(annotations), "--images", str(images), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "file_name")
    assert tree(tmp_path) == before  # no output, no staging folder, no t3out/, nothing beside the secret
    with pytest.raises(DatasetError, match="image id=1"):
        split_dataset(annotations, images, out)
    assert tree(tmp_path) == before


def test_reported_traversal_layout_is_refused(tmp_path, capsys):
    """The reported case: file_name ../../secret.jpg, --images t3/a/b, --out t3out/split."""
    images = tmp_path / "t3" / "a" / "b"
    for index, name in enumerate(NAMES):
        write_png(images / name, 30 * index)
    write_png(tmp_path / "t3" / "secret.jpg", 200)
    annotations = tmp_path / "t3" / "annotations.json"
    annotations.write_text(json.dumps(coco_document(("../../secret.jpg", *NAMES[1:]))))
    before = tree(tmp_path)
    assert main(["data", "check", str(annotations), "--images", str(images)]) == 1
    capsys.readouterr()
    assert main(["data", "split", str(annotations), "--images", str(images), "--out",
                 str(tmp_path / "t3out" / "split")]) == 2
    one_error_line(capsys.readouterr().err, "leaves the images folder")
    assert tree(tmp_path) == before and not (tmp_path / "t3out").exists()


@pytest.mark.parametrize("form", ["dotdot", "absolute", "nul", "backslash"])
def test_loader_refuses_an_unsafe_name_before_reading(tmp_path, form):
    root = make_layout(tmp_path / "layout")
    set_file_name(root / "annotations" / "instances_val.json", 0, UNSAFE_NAMES[form][0])
    with pytest.raises(DatasetError, match="image id=1: file_name .*; ") as caught:
        CocoDetection(root, root / "annotations" / "instances_val.json")
    assert "\n" not in str(caught.value)
    with pytest.raises(DatasetError, match="file_name"):
        require_clean_layout(root)


def _layout_with_traversal(tmp_path: Path) -> Path:
    root = make_layout(tmp_path / "layout")
    write_png(tmp_path / "secret.jpg", 9)
    for split in ("train", "val"):
        set_file_name(root / "annotations" / f"instances_{split}.json", 0, "../../secret.jpg")
    return root


def test_train_refuses_an_unsafe_dataset_before_writing(tmp_path, capsys):
    root = _layout_with_traversal(tmp_path)
    out = tmp_path / "finetuned"
    code = main(["train", "--preset", "student", "--data", str(root), "--init", "shipped", "--epochs", "1",
                 "--out", str(out)])
    assert code == 2 and not out.exists()
    one_error_line(capsys.readouterr().err, "leaves the images folder")


def test_evaluate_refuses_an_unsafe_dataset(tmp_path, capsys):
    root = _layout_with_traversal(tmp_path)
    metrics = tmp_path / "metrics.json"
    code = main(["evaluate", "--preset", "student", "--data", str(root), "--json", str(metrics)])
    assert code == 2 and not metrics.exists()
    one_error_line(capsys.readouterr().err, "leaves the images folder")


def test_study_refuses_an_unsafe_dataset_before_writing(tmp_path, capsys):
    root = _layout_with_traversal(tmp_path)
    out = tmp_path / "reports"
    shipped = Path(__file__).parents[1] / "compresskit" / "checkpoints" / "student.pt"
    code = main(["study", "--checkpoint", str(shipped), "--data", str(root), "--out", str(out)])
    assert code == 2 and not out.exists()
    one_error_line(capsys.readouterr().err, "leaves the images folder")


def test_file_name_rules():
    for name in ("a.jpg", "photos/2024/a.jpg", "./a.jpg", "frame:01.jpg", "ünïcödé 写真.png", "a..b.jpg"):
        assert file_name_problem(name) is None, name
    for name, _ in UNSAFE_NAMES.values():
        assert file_name_problem(name) is not None, name
    for name in ("", ".", "./", None, 3, ["a.jpg"]):
        assert file_name_problem(name) is not None, name


# ------------------------------------------------------------------------------------------ links and --out
def test_symlinked_images_are_read_and_the_split_holds_real_files(tmp_path, capsys):
    store = tmp_path / "store"  # a shared image store (a DVC cache, say), outside the export
    annotations, images = make_export(tmp_path / "export")
    store.mkdir()
    for name in NAMES[:2]:
        (images / name).rename(store / name)
        os.symlink(store / name, images / name)
    stored = {name: (store / name).read_bytes() for name in NAMES[:2]}
    assert main(["data", "check", str(annotations), "--images", str(images)]) == 0
    for mode in ("link", "copy"):
        out = tmp_path / f"split-{mode}"
        split_dataset(annotations, images, out, SplitConfig(val_fraction=0.5, images=mode))
        placed = [path for path in out.rglob("*.png")]
        assert len(placed) == len(NAMES) and not any(path.is_symlink() for path in placed)
        assert CocoDetection(out, out / "annotations" / "instances_val.json")[0][0].shape[1:] == (SIZE[1], SIZE[0])
    assert {name: (store / name).read_bytes() for name in NAMES[:2]} == stored
    assert all((images / name).is_symlink() for name in NAMES[:2])


def test_split_refuses_an_out_that_is_a_link(tmp_path, capsys):
    annotations, images = make_export(tmp_path / "export")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "out")
    assert main(["data", "split", str(annotations), "--images", str(images), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, "is a symbolic link")
    assert not list(elsewhere.iterdir())
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(DatasetError, match="symbolic link"):
        split_dataset(annotations, images, tmp_path / "dangling")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("where", ["images", "images/split", "link-to-images/split"])
def test_split_refuses_an_out_inside_the_images(tmp_path, capsys, where):
    annotations, images = make_export(tmp_path / "export")
    os.symlink(images, tmp_path / "link-to-images")
    out = tmp_path / "export" / where if where.startswith("images") else tmp_path / where
    before = tree(images)
    assert main(["data", "split", str(annotations), "--images", str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    one_error_line(err, "not empty" if where == "images" else "inside it")
    assert tree(images) == before
    with pytest.raises(DatasetError):
        split_dataset(annotations, images, out)


def test_split_refuses_an_out_holding_the_images(tmp_path):
    annotations, images = make_export(tmp_path / "export")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="inside --out"):
        split_dataset(annotations, empty / "images", empty)  # the images folder would be (inside) the output


def test_a_failing_split_leaves_nothing_half_written(tmp_path, monkeypatch):
    annotations, images = make_export(tmp_path / "export")
    placed = []

    def fail_on_the_third(source, target, mode):
        if len(placed) == 2:
            raise OSError(28, "No space left on device")
        placed.append(target)
        return original(source, target, mode)

    original = split_module.place_image
    monkeypatch.setattr(split_module, "place_image", fail_on_the_third)
    before = tree(tmp_path)
    with pytest.raises(OSError, match="No space"):
        split_dataset(annotations, images, tmp_path / "out")
    assert len(placed) == 2 and tree(tmp_path) == before  # neither out nor its staging folder remains
    (tmp_path / "empty-out").mkdir()
    with pytest.raises(OSError):
        split_dataset(annotations, images, tmp_path / "empty-out")
    assert (tmp_path / "empty-out").is_dir() and not list((tmp_path / "empty-out").iterdir())


def test_convert_to_rgb_never_writes_through_a_link(tmp_path):
    images = tmp_path / "images"
    store = tmp_path / "store"
    write_png(store / "gray.png", 0)
    Image.open(store / "gray.png").convert("L").save(store / "gray.png")
    images.mkdir()
    os.symlink(store, images / "shared")
    with pytest.raises(DatasetError, match="symbolic link"):
        convert_to_rgb_(images, ["shared/gray.png"])
    with pytest.raises(DatasetError, match="leaves the images folder"):
        convert_to_rgb_(images, ["../store/gray.png"])
    assert Image.open(store / "gray.png").mode == "L"


# ------------------------------------------------------------------------------------- what the JSON parser says
def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


JSON_FAILURES = {
    "deep_nesting": (_deep(100_000), "nests lists or objects too deeply"),
    "deep_nesting_in_a_record": (b'{"images": ' + _deep(100_000) + b', "annotations": [], "categories": []}',
                                 "nests lists or objects too deeply"),
    "invalid_utf8": (b'{"images": [{"file_name": "\xff\xfe.jpg"}]}', "is not UTF-8 text"),
    "huge_integer": (b'{"images": [{"id": ' + b"9" * 5000 + b"}]}", "holds a value Python cannot read"),
    "truncated": (b'{"images": [{"id": 1, "file_na', "is incomplete JSON"),
}


@pytest.mark.parametrize("form", sorted(JSON_FAILURES))
def test_json_parser_failures_are_one_message(tmp_path, capsys, form):
    payload, what = JSON_FAILURES[form]
    root = make_layout(tmp_path / "layout")
    annotations = root / "annotations" / "instances_val.json"
    annotations.write_bytes(payload)
    report = check_dataset(annotations, root, progress=False)
    assert [p.kind for p in report.problems] == ["invalid_json"] and what in report.problems[0].what
    assert main(["data", "check", str(annotations), "--images", str(root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(message_lines(err)) == 2 and what in message_lines(err)[0]
    with pytest.raises(DatasetError, match=what):
        CocoDetection(root, annotations)
    assert main(["data", "split", str(annotations), "--images", str(root), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, what)
    assert not (tmp_path / "out").exists()


def test_memory_error_while_parsing_is_one_message(monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("compresskit.data.files.json.loads", exhausted)
    with pytest.raises(JsonFileError, match="too large to parse in the memory available"):
        parse_json_bytes(Path("big.json"), b"[1, 2, 3]")


def test_nan_literals_and_a_bom_are_read_and_judged(tmp_path, capsys):
    root = make_layout(tmp_path / "layout")
    annotations = root / "annotations" / "instances_val.json"
    text = annotations.read_text().replace('"bbox": [4, 4, 20, 20]', '"bbox": [NaN, 4, Infinity, 20]', 1)
    annotations.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a BOM, as Windows editors write
    report = check_dataset(annotations, root, progress=False)
    assert [p.kind for p in report.problems] == ["wrong_type"] and "not 4 finite numbers" in report.problems[0].what
    with pytest.raises(DatasetError, match="not 4 finite numbers"):
        CocoDetection(root, annotations)
    annotations.write_bytes(b"\xef\xbb\xbf" + text.replace("NaN", "4").replace("Infinity", "20").encode())
    assert check_dataset(annotations, root, progress=False).ok and len(CocoDetection(root, annotations)) == 2


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(images={"1": d["images"][0]}), "'images' is a dict, not a list"),
    (lambda d: d["annotations"][0].update(category_id=True), "category_id True is not an integer"),
    (lambda d: d["images"][0].update(id=10**30), "is not in 'images'"),
    (lambda d: d["annotations"][0].update(bbox=["4", "4", "20", "20"]), "not 4 finite numbers"),
    (lambda d: d["annotations"][0].update(bbox=[4, 4, 10**400, 20]), "not 4 finite numbers"),
    (lambda d: d["annotations"][0].update(area=[[[[1]]]]), "area"),
    (lambda d: d["categories"][0].update(name={"en": "disc"}), "name"),
])
def test_wrong_types_are_one_line_from_check_and_loader(tmp_path, mutate, needle):
    root = make_layout(tmp_path / "layout")
    annotations = root / "annotations" / "instances_val.json"
    document = json.loads(annotations.read_text())
    mutate(document)
    annotations.write_text(json.dumps(document))
    report = check_dataset(annotations, root, progress=False)
    assert not report.ok and any(needle in p.what for p in report.errors), report.format_problems()
    assert all("\n" not in str(p) for p in report.problems)
    try:
        dataset = CocoDetection(root, annotations)
        for index in range(len(dataset)):
            dataset[index]
    except DatasetError as error:
        assert "\n" not in str(error)


def test_a_relative_link_to_an_image_is_split_as_the_file(tmp_path):
    """link(2) on a symbolic link links the link itself, which a relative one would leave dangling in the split."""
    annotations, images = make_export(tmp_path / "export")
    (tmp_path / "export" / "store").mkdir()
    (images / "a.png").rename(tmp_path / "export" / "store" / "a.png")
    os.symlink(Path("..") / "store" / "a.png", images / "a.png")
    out = tmp_path / "split"
    split_dataset(annotations, images, out, SplitConfig(val_fraction=0.5, images="link"))
    (placed,) = out.rglob("a.png")
    assert not placed.is_symlink() and placed.read_bytes() == (tmp_path / "export" / "store" / "a.png").read_bytes()


@pytest.mark.parametrize("payload, what", [
    (b"null", "top level is a JSON NoneType"),  # found by the fuzz test: null once passed as an empty dataset
    (b'{"images": [], "annotations": [], "categories": [], "info": ' + b"[" * 70 + b"]" * 70 + b"}",
     "more than 64 levels deep"),  # parses, but json.dumps would recurse past its limit when the split writes it
])
def test_valid_json_that_is_no_dataset_is_one_problem(tmp_path, capsys, payload, what):
    annotations, images = make_export(tmp_path / "export")
    annotations.write_bytes(payload)
    report = check_dataset(annotations, images, progress=False)
    assert len(report.errors) == 1 and what in report.errors[0].what
    assert main(["data", "split", str(annotations), "--images", str(images), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, what)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError):
        CocoDetection(images, annotations)


def test_a_decompression_bomb_is_one_line_from_check_and_loader(tmp_path, monkeypatch):
    root = make_layout(tmp_path / "layout")
    annotations = root / "annotations" / "instances_val.json"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 64x48 image is then over twice the limit: a "bomb"
    report = check_dataset(annotations, root, progress=False)
    assert {p.kind for p in report.errors} == {"corrupt_image"} and "DecompressionBombError" in report.errors[0].what
    with pytest.raises(DatasetError, match="DecompressionBombError") as caught:
        CocoDetection(root, annotations)[0]
    assert "\n" not in str(caught.value)
