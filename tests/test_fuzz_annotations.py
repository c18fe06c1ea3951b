"""Property-based fuzzing of COCO annotation files: whatever a file holds, ``data check`` returns a report, the loader
accepts it or raises :class:`DatasetError`, and ``data split`` writes its whole output or nothing, never outside it.

Each example mutates a small valid file (three 24x16 PNGs): wrong types, missing keys, NaN/inf/negative/huge numbers,
duplicated or dangling ids, unicode, over-long and escaping names, deep nesting, and truncation or garbage at any
byte. 50 examples by default (a few seconds); ``COMPRESSKIT_FUZZ_EXAMPLES=5000`` runs a thorough search
(docs/robustness.md). Hypothesis keeps no database: a failure prints the example to reproduce it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")  # a dev dependency (pip install -e ".[dev]")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from compresskit.data import CocoDetection  # noqa: E402
from compresskit.data.check import check_dataset, main_check  # noqa: E402
from compresskit.data.split import SplitConfig, split_dataset  # noqa: E402
from compresskit.errors import DatasetError  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("COMPRESSKIT_FUZZ_EXAMPLES", "50"))
# Hypothesis caches (its unicode tables) under ./.hypothesis unless told otherwise: keep the checkout clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "compresskit-hypothesis")
NAMES = ("a.png", "b.png", "sub/c.png")
SIZE = (24, 16)
SECTIONS = ("images", "annotations", "categories")
KEYS = {"images": ("id", "file_name", "width", "height", "coco_url"),
        "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"),
        "categories": ("id", "name", "supercategory")}


def base_document() -> dict:
    return {"info": {"description": "fuzz"},
            "images": [{"id": i + 1, "file_name": name, "width": SIZE[0], "height": SIZE[1]}
                       for i, name in enumerate(NAMES)],
            "annotations": [{"id": 10 + i, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [2, 2, 8, 6],
                             "area": 48, "iscrowd": 0} for i in range(len(NAMES))],
            "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "tile"}]}


@dataclass(frozen=True)
class Raw:
    """JSON text put in place of a value after serialising: what ``json.dumps`` cannot write itself (nesting
    deeper than its recursion limit, integers longer than Python's digit limit)."""

    text: str


@dataclass(frozen=True)
class Secret:
    """The absolute path of a real image outside the images folder (known only once the sandbox exists)."""


ESCAPING_NAMES = ["../secret.png", "../../secret.png", "sub/../../secret.png", "..\\secret.png", "C:secret.png",
                  "C:/secret.png", "a.png\x00", "./a.png", "sub//c.png", "sub/", ".", "..", "", "\ud800.png",
                  "a\nb.png", "é/写真.png", "x" * 300 + ".png", "sub/" + "y" * 256, "/dev/zero", "sub"]
NUMBERS = [0, -1, 1, 2, 3, 10, 999, 2**31, 2**63, 10**30, -10**30, 10**300, 1e308, 5e-324, -0.0, 0.5]

# allow_subnormal=False: the suite's latency runs set torch.set_flush_denormal(True) in the worker process, and
# hypothesis refuses to draw subnormal floats where the CPU flushes them.
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(),
              st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), st.text(max_size=12),
              st.sampled_from(ESCAPING_NAMES), st.just(Secret()),
              st.integers(2, 5000).map(lambda depth: Raw("[" * depth + "]" * depth)),
              st.integers(4301, 6000).map(lambda digits: Raw("7" * digits)),
              st.sampled_from([Raw("NaN"), Raw("-Infinity"), Raw("1e999")])),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.sampled_from(["id", "name", "x", ""]), children, max_size=3)),
    max_leaves=8)

section = st.sampled_from(SECTIONS)
index = st.integers(0, 4)
key = st.one_of(st.sampled_from(sorted({k for keys in KEYS.values() for k in keys})), st.text(max_size=4))
record_edit = st.tuples(st.just("set"), section, index, key, values)
name_edit = st.tuples(st.just("set"), st.just("images"), index, st.just("file_name"),
                      st.one_of(st.sampled_from(ESCAPING_NAMES), st.just(Secret()), st.text(max_size=12)))
box_edit = st.tuples(st.just("set"), st.just("annotations"), index, st.just("bbox"),
                     st.lists(st.one_of(st.sampled_from(NUMBERS), st.floats(allow_subnormal=False), values), max_size=5))
mutations = st.one_of(
    record_edit, record_edit, record_edit,  # the commonest fault: one value of one record
    name_edit, box_edit,
    st.tuples(st.just("delete"), section, index, key),
    st.tuples(st.just("duplicate"), section, index),
    st.tuples(st.just("dangle"), index, st.sampled_from(["image_id", "category_id"]), st.sampled_from(NUMBERS)),
    st.tuples(st.just("section"), section, values),
    st.tuples(st.just("drop_section"), section),
    st.tuples(st.just("top"), values),
)
# Most files parse (so the checks behind the parser get fuzzed too); one in four is cut short or garbled.
endings = st.one_of(st.none(), st.none(), st.none(), st.tuples(st.just("truncate"), st.floats(0, 1, allow_subnormal=False)),
                    st.tuples(st.just("garble"), st.floats(0, 1, allow_subnormal=False), st.binary(min_size=1, max_size=4)))


def mutate(document: object, mutation: tuple) -> object:
    """Apply one mutation; returns the new document (the top level itself may be replaced)."""
    kind = mutation[0]
    if kind == "top":
        return mutation[1]
    if not isinstance(document, dict):
        return document
    if kind == "section":
        document[mutation[1]] = mutation[2]
    elif kind == "drop_section":
        document.pop(mutation[1], None)
    else:
        records = document.get(mutation[1] if kind != "dangle" else "annotations")
        if not isinstance(records, list) or not records:
            return document
        record = records[mutation[2 if kind != "dangle" else 1] % len(records)]
        if not isinstance(record, dict):
            return document
        if kind == "set":
            record[mutation[3]] = mutation[4]
        elif kind == "delete":
            record.pop(mutation[3], None)
        elif kind == "duplicate":
            records.append(copy.deepcopy(record))
        elif kind == "dangle":
            record[mutation[2]] = mutation[3]
    return document


def serialise(document: object, secret: Path, ending: tuple | None) -> bytes:
    """JSON bytes of ``document``, with Raw and Secret placeholders filled in, then truncated or garbled."""
    raws: dict[str, str] = {}

    def placeholders(value: object) -> object:
        if isinstance(value, Raw):
            token = f"@raw{len(raws)}@"
            raws[token] = value.text
            return token
        if isinstance(value, Secret):
            return str(secret)
        if isinstance(value, list):
            return [placeholders(v) for v in value]
        if isinstance(value, dict):
            return {k: placeholders(v) for k, v in value.items()}
        return value

    text = json.dumps(placeholders(document))  # ensure_ascii: lone surrogates travel as \ud800 escapes
    for token, raw in raws.items():
        text = text.replace(f'"{token}"', raw)
    payload = text.encode("utf-8")
    if ending is not None and ending[0] == "truncate":
        payload = payload[:int(ending[1] * len(payload))]
    elif ending is not None:
        at = int(ending[1] * len(payload))
        payload = payload[:at] + ending[2] + payload[at:]
    return payload


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """``images/`` with the three PNGs, and ``secret.png`` beside it that no dataset may reach."""
    root = tmp_path_factory.mktemp("fuzz")
    for shade, name in enumerate(NAMES):
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZE, color=(60 * shade, 100, 180)).save(path)
    Image.new("RGB", SIZE, color=(255, 0, 0)).save(root / "secret.png")
    return root


def snapshot(folder: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` but ``skip`` and its contents, with each plain file's bytes."""
    result = {}
    for path in folder.rglob("*"):
        if path == skip or skip in path.parents:
            continue
        result[str(path.relative_to(folder))] = path.read_bytes() if path.is_file() and not path.is_symlink() \
            else None
    return result


def stays_inside(name: object) -> bool:
    """An independent, plain test of a split's file_name: relative, no '..', no backslash or NUL."""
    if not isinstance(name, str):
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in name and "\x00" not in name


@settings(max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=10), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(mutations, min_size=1, max_size=4), endings)
def test_mutated_annotation_files_never_escape_or_crash(sandbox, mutation_list, ending):
    document: object = base_document()
    for mutation in mutation_list:
        document = mutate(document, mutation)
    work = Path(tempfile.mkdtemp(dir=sandbox, prefix="case-"))
    try:
        annotations = work / "annotations.json"
        annotations.write_bytes(serialise(document, sandbox / "secret.png", ending))
        images = sandbox / "images"

        # data check: a report, never an exception; each problem one line; the CLI path prints and exits 0 or 1
        report = check_dataset(annotations, images, progress=False)
        for kind in sorted({p.kind for p in report.errors}) or ["ok"]:  # --hypothesis-show-statistics counts them
            event(f"check: {kind}")
        assert all("\n" not in str(problem) for problem in report.problems)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            assert main_check(annotations, images, progress=False) == (0 if report.ok else 1)
        assert "Traceback" not in err.getvalue()

        # the loader: accepts or raises DatasetError (one line), and accepts whatever the check passes
        try:
            dataset = CocoDetection(images, annotations)
            for item in range(len(dataset)):
                dataset[item]
        except DatasetError as error:
            assert "\n" not in str(error), str(error)
            assert not report.ok, f"the check passed what the loader refused: {error}"

        # split: all or nothing, inside --out only
        out = work / "out"
        before = snapshot(sandbox, out)
        try:
            manifest = split_dataset(annotations, images, out, SplitConfig(val_fraction=0.5, images="copy"))
        except DatasetError:
            assert not out.exists()
            manifest = None
        assert snapshot(sandbox, out) == before, "split wrote or changed something outside --out"
        event("split: written" if manifest is not None else "split: refused")
        if manifest is not None:
            assert report.ok
            assert not list(work.glob(".out.*")), "split left its staging folder behind"
            for split in ("train", "val"):
                written = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
                for image in written["images"]:
                    assert stays_inside(image["file_name"]) and (out / image["file_name"]).is_file()
                    assert not (out / image["file_name"]).is_symlink()
            assert all(os.path.realpath(path).startswith(os.path.realpath(out) + os.sep) for path in out.rglob("*"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Edits a real export can carry and still be a usable dataset, so the fuzzing also reaches what runs after a clean
# check: other spellings of a file name, any text as a category name, odd but finite boxes, huge unique ids, and
# unknown keys holding anything at all.
finite = st.floats(-4, 40, allow_nan=False, allow_infinity=False, allow_subnormal=False)
plausible_edits = st.one_of(
    st.tuples(st.just("spelling"), index, st.sampled_from(["./{}", "{}", "./././{}"])),
    st.tuples(st.just("category_name"), index, st.text(min_size=1, max_size=300)),
    st.tuples(st.just("id"), st.sampled_from(SECTIONS), index,
              st.one_of(st.integers(-10**30, 10**30), st.sampled_from(NUMBERS[:12]))),
    st.tuples(st.just("bbox"), index, st.lists(finite, min_size=4, max_size=4)),
    st.tuples(st.just("area"), index, st.one_of(st.floats(0, 1e6, allow_subnormal=False), st.just(None))),
    st.tuples(st.just("iscrowd"), index, st.sampled_from([0, 1, None])),
    st.tuples(st.just("extra"), st.sampled_from((*SECTIONS, "top")), index, st.text(max_size=8), values),
)


def plausible_edit(document: dict, edit: tuple) -> None:
    kind = edit[0]
    if kind == "spelling":
        image = document["images"][edit[1] % len(document["images"])]
        image["file_name"] = edit[2].format(image["file_name"]).replace("sub/", "sub//", edit[1] % 2)
    elif kind == "category_name":
        document["categories"][edit[1] % 2]["name"] = edit[2]
    elif kind == "id":
        records = document[edit[1]]
        records[edit[2] % len(records)]["id"] = edit[3]
    elif kind in ("bbox", "area", "iscrowd"):
        annotation = document["annotations"][edit[1] % len(document["annotations"])]
        if edit[2] is None:
            annotation.pop(kind, None)
        else:
            annotation[kind] = edit[2]
    elif kind == "extra":
        target = document if edit[1] == "top" else document[edit[1]][edit[2] % len(document[edit[1]])]
        if edit[3] not in KEYS.get(edit[1], SECTIONS):
            target[edit[3]] = edit[4]


@settings(max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=10), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(plausible_edits, min_size=1, max_size=5))
def test_files_the_check_passes_load_split_and_print(sandbox, edits):
    document = base_document()
    for edit in edits:
        plausible_edit(document, edit)
    work = Path(tempfile.mkdtemp(dir=sandbox, prefix="case-"))
    try:
        annotations = work / "annotations.json"
        annotations.write_bytes(serialise(document, sandbox / "secret.png", None))
        images = sandbox / "images"
        report = check_dataset(annotations, images, progress=False)
        for kind in sorted({p.kind for p in report.errors}) or ["ok"]:
            event(f"check: {kind}")
        # What the commands print goes to a strict UTF-8 stream, as a terminal's: a lone surrogate must not crash it.
        stdout, stderr = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8") for _ in range(2))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main_check(annotations, images, progress=False) == (0 if report.ok else 1)
        out = work / "out"
        if not report.ok:
            with pytest.raises(DatasetError):
                split_dataset(annotations, images, out)
            assert not out.exists()
            return
        dataset = CocoDetection(images, annotations)
        assert len(dataset) == len(NAMES) and all(dataset[i][0].shape[1:] == SIZE[::-1] for i in range(len(dataset)))
        from compresskit.cli import main

        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main(["data", "split", str(annotations), "--images", str(images), "--out", str(out),
                         "--val-fraction", "0.5", "--copy"]) == 0
        for split in ("train", "val"):
            CocoDetection(out, out / "annotations" / f"instances_{split}.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
