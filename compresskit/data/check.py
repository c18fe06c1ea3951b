"""`compresskit data check`: validate a user's COCO-format dataset before any training run touches it.

Every data problem becomes a :class:`Problem` that names the file, the record and the fix (docs/method.md, "Reliability"), so a
user sees all of them at once instead of the first ``KeyError`` deep inside pycocotools or a DataLoader worker.
Nothing here raises for bad data; only programmer errors (wrong argument types) propagate. ``main_check`` prints
problems to stderr and the summary of a clean dataset to stdout, so ``> summary.txt`` keeps only the summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from compresskit.data.check_report import CheckReport, Problem
from compresskit.data.files import JsonFileError, parse_json_bytes
from compresskit.data.safe_paths import file_name_problem, normalized_file_name
from compresskit.data.values import is_int as _is_int
from compresskit.data.values import is_number as _is_number
from compresskit.data.values import MAX_JSON_DEPTH, nesting_depth_exceeds, one_line, shown

__all__ = ["CheckReport", "Problem", "check_dataset", "main_check"]

# COCO's area buckets (pycocotools COCOeval.areaRng): small < 32², medium < 96², large the rest.
SMALL_AREA = 32**2
LARGE_AREA = 96**2
# Annotation tools round corners outwards, so a box may poke slightly past the border without being wrong.
BOX_TOLERANCE_PX = 1.0
REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}
_UNREADABLE = object()  # load_json's answer for a file that did not parse (a file may hold a JSON null)


class _Checker:
    """Holds the problem list while the sections are checked in dependency order."""

    def __init__(self, annotation_file: Path, images_dir: Path) -> None:
        self.annotation_file, self.images_dir = annotation_file, images_dir
        self.file = str(annotation_file)
        self.problems: list[Problem] = []
        self.hints: list[str] = []
        self.explained: set[str] = set()
        # Ids of records dropped for missing keys: references to them are not reported again as unknown.
        self.incomplete_ids: dict[str, set] = {key: set() for key in REQUIRED_KEYS}

    def add(self, kind: str, record: str, what: str, fix: str, severity: str = "error", file: str = "") -> None:
        self.problems.append(Problem(file or self.file, record, what, fix, severity, kind))

    def load_json(self) -> Any:
        try:
            text = self.annotation_file.read_bytes()
        except OSError as exc:
            self.add("unreadable_file", "-", f"cannot read the annotation file ({exc.strerror or exc})",
                     "check the path and permissions")
            return _UNREADABLE
        if not text.strip():
            self.add("invalid_json", "-", f"{self.annotation_file.name} is empty ({len(text)} bytes)",
                     "was the download or export interrupted? re-export or re-download it")
            return _UNREADABLE
        try:
            return parse_json_bytes(self.annotation_file, text)
        except JsonFileError as exc:  # bad syntax, truncation, not UTF-8, absurd nesting or numbers
            self.add("invalid_json", "-", exc.what, exc.fix)
        return _UNREADABLE

    def section(self, data: dict, key: str) -> list[dict] | None:
        """The list under ``key`` with non-dict entries and records missing keys reported and dropped."""
        if key not in data:
            self.add("missing_key", "-", f"top-level key '{key}' is missing",
                     f"a COCO detection file needs 'images', 'annotations' and 'categories'; add '{key}'")
            return None
        if not isinstance(data[key], list):
            self.add("wrong_type", "-", f"'{key}' is a {type(data[key]).__name__}, not a list",
                     f"make '{key}' a JSON list of objects")
            return None
        if not data[key]:
            self.add("empty", "-", f"'{key}' is empty", f"the dataset needs at least one entry in '{key}'")
        kept = []
        for index, record in enumerate(data[key]):
            where = f"{key}[{index}]"
            if not isinstance(record, dict):
                self.add("wrong_type", where, f"entry is a {type(record).__name__}, not an object",
                         "each entry must be a JSON object")
                continue
            missing = [k for k in REQUIRED_KEYS[key] if k not in record]
            if missing:
                self.add("missing_key", self.record(key, record, index), f"missing key(s) {', '.join(missing)}",
                         f"every {_SINGULAR[key]} needs {', '.join(REQUIRED_KEYS[key])}")
                if _is_int(record.get("id")):
                    self.incomplete_ids[key].add(record["id"])
            elif not _is_int(record["id"]):
                self.add("wrong_type", where, f"id {shown(record['id'])} is not an integer",
                         "use integer ids as COCO does")
            else:
                kept.append(record)
        return kept

    @staticmethod
    def record(key: str, record: dict, index: int) -> str:
        if "id" not in record:
            return f"{key}[{index}]"
        name = f"{_SINGULAR[key]} id={shown(record['id'])}"
        if key != "images" or "file_name" not in record:
            return name
        file_name = record["file_name"]
        return f"{name} (file_name={one_line(file_name) if isinstance(file_name, str) else shown(file_name)})"

    def unique_ids(self, key: str, records: list[dict]) -> dict[int, dict]:
        """Index by id, reporting every record that reuses an id (the first one wins, as in pycocotools' index)."""
        by_id: dict[int, dict] = {}
        for index, record in enumerate(records):
            if record["id"] in by_id:
                self.add("duplicate_id", self.record(key, record, index), f"duplicate {_SINGULAR[key]} id",
                         f"give each {_SINGULAR[key]} its own id (pycocotools silently keeps only one)")
            else:
                by_id[record["id"]] = record
        return by_id

    def check_categories(self, categories: list[dict]) -> dict[int, str]:
        """Index categories by id, reporting names that are not text (the summary and reports print them)."""
        names = {}
        for cid, category in self.unique_ids("categories", categories).items():
            if isinstance(category["name"], str) and category["name"]:
                names[cid] = category["name"]
            else:
                self.add("wrong_type", self.record("categories", category, 0),
                         f"name {shown(category['name'])} is not a non-empty string", "name the category in text")
                names[cid] = f"category {cid}"
        return names

    def check_images(self, images: list[dict]) -> dict[int, dict]:
        by_id = self.unique_ids("images", images)
        seen_names: dict[str, int] = {}
        for image in by_id.values():
            where = self.record("images", image, 0)
            name = image["file_name"]
            if not isinstance(name, str) or not name:
                self.add("wrong_type", where, "file_name is not a non-empty string", "set it to the image's path")
            elif (unsafe := file_name_problem(name)) is not None:
                # Never read, linked or written: the name would reach outside the images folder.
                self.add("unsafe_file_name", where, f"file_name {unsafe[0]}", unsafe[1])
            elif normalized_file_name(name) in seen_names:
                self.add("duplicate_file_name", where,
                         f"same file as image id={seen_names[normalized_file_name(name)]}",
                         "each image record needs its own file; remove the duplicate and merge its annotations")
            else:
                seen_names[normalized_file_name(name)] = image["id"]
            for key in ("width", "height"):
                if not (_is_int(image[key]) and image[key] > 0):
                    self.add("wrong_type", where, f"{key} {shown(image[key])} is not a positive integer",
                             f"set {key} to the image's size in pixels")
        return by_id

    def check_annotations(self, annotations: list[dict], images: dict[int, dict] | None,
                          categories: dict[int, str] | None) -> dict:
        """Check every annotation and count what the summary shows."""
        summary = {"crowd": 0, "small": 0, "medium": 0, "large": 0,
                   "per_category": {cid: 0 for cid in categories or {}}}
        for ann in self.unique_ids("annotations", annotations).values():
            where = self.record("annotations", ann, 0)
            bad_refs = [k for k in ("image_id", "category_id") if not _is_int(ann[k])]
            if bad_refs:  # also keeps unhashable values (lists) away from the dict lookups below
                self.add("wrong_type", where, "; ".join(f"{k} {shown(ann[k])} is not an integer" for k in bad_refs),
                         "refer to images and categories by their integer id")
                continue
            image = (images or {}).get(ann["image_id"])
            # Only cross-check when the other section is usable, so one missing section is one problem, not 10,000.
            if images and image is None and ann["image_id"] not in self.incomplete_ids["images"]:
                self.add("unknown_image", where, f"image_id {ann['image_id']} is not in 'images'",
                         "add the image record or remove the annotation")
            if ann["category_id"] in summary["per_category"]:
                summary["per_category"][ann["category_id"]] += 1
            elif categories and ann["category_id"] not in self.incomplete_ids["categories"]:
                self.add("unknown_category", where, f"category_id {ann['category_id']} is not in 'categories'",
                         "add the category or map the annotation to an existing one")
            box_area = self.check_box(ann, where, image)
            if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
                self.add("bad_iscrowd", where, f"iscrowd is {shown(ann['iscrowd'])}, not 0 or 1",
                         "set iscrowd to 0 or 1")
            elif ann.get("iscrowd") == 1:
                summary["crowd"] += 1
            area = self.check_area(ann, where)
            area = area if area is not None else box_area
            if area is not None:
                summary["small" if area < SMALL_AREA else "medium" if area < LARGE_AREA else "large"] += 1
        return summary

    def check_box(self, ann: dict, where: str, image: dict | None) -> float | None:
        """Report a malformed, empty or out-of-image box; return its area when the box is usable."""
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            self.add("wrong_type", where, f"bbox {shown(bbox)} is not 4 finite numbers [x, y, width, height]",
                     "write the box as [x, y, width, height] in pixels")
            return None
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            self.add("box_nonpositive", where, f"box {shown(bbox)} has non-positive width or height",
                     "remove the annotation or give it a positive width and height")
            return None
        if image is not None and _is_int(image["width"]) and _is_int(image["height"]):
            width, height, tol = image["width"], image["height"], BOX_TOLERANCE_PX
            if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                self.add("box_outside", where, f"box {shown(bbox)} extends outside the {width}x{height} image "
                         f"id={image['id']}", "clip the box to the image or correct its coordinates")
        return w * h

    def check_area(self, ann: dict, where: str) -> float | None:
        if "area" not in ann:
            self.add("missing_area", where, "no 'area'", "none needed: the loader computes it from the box",
                     severity="warning")
            return None
        if not _is_number(ann["area"]):
            self.add("wrong_type", where, f"area {shown(ann['area'])} is not a finite number", "set area in pixels²")
        elif ann["area"] < 0:
            self.add("bad_area", where, f"area {shown(ann['area'])} is negative",
                     "set area to the object's pixel area")
        else:
            return float(ann["area"])
        return None

    def check_files(self, images: dict[int, dict], check_pixels: bool, progress: bool) -> None:
        """Existence always (cheap); decoding, size and colour mode only when ``check_pixels``."""
        if not self.images_dir.is_dir():  # one problem instead of one per image
            self.add("missing_image", "-", f"images folder {self.images_dir} does not exist",
                     "pass the folder that the json's file_name entries are relative to")
            return
        records = [im for im in images.values() if file_name_problem(im["file_name"]) is None]  # safe names only
        missing = []
        for image in tqdm(records, desc="checking images", unit="img", disable=not (progress and check_pixels)):
            path = self.images_dir / normalized_file_name(image["file_name"])
            where = self.record("images", image, 0)
            try:
                exists = path.is_file()  # follows links: an image in a shared store is an image
            except OSError as exc:  # permission denied, path too long: is_file() only absorbs "not there"
                self.add("unreadable_image", where, f"image file {path} cannot be checked "
                         f"({exc.strerror or exc})", "check the path and its permissions", file=self.file)
                continue
            if not exists:
                missing.append(image)
                self.add("missing_image", where, f"image file {path} does not exist",
                         "restore the file, fix file_name (relative to the images folder) or remove the record",
                         file=self.file)
            elif check_pixels:
                self.check_pixels(path, image, where)
        self.hint_doubled_folder(missing)

    def hint_doubled_folder(self, missing: list[dict]) -> None:
        """One hint when the missing files are under another folder than ``--images``: the folder above, when
        file_names already start with the images folder's own name (``val/0001.jpg`` checked against
        ``--images emb/val`` looks for ``emb/val/val/0001.jpg``), or a folder inside it (``--images export``
        for files in ``export/images/``). The missing-image lines then shrink to one example and a count."""
        folder = self.images_dir
        if not missing:
            return
        inside = sorted(child for child in _subfolders(folder))
        for candidate in ([folder.parent] if folder.name else []) + inside:
            found = [image for image in missing if (candidate / normalized_file_name(image["file_name"])).is_file()]
            if len(found) * 2 < len(missing):  # only when it explains most of the missing files
                continue
            example = one_line(found[0]["file_name"])
            if candidate == folder.parent:
                why = (f"the file_name entries already start with '{folder.name}/' (e.g. {example}), so pass "
                       f"--images {folder.parent} instead of --images {folder}")
            else:
                why = (f"the file_name entries (e.g. {example}) are relative to that folder, so pass "
                       f"--images {candidate} instead of --images {folder}")
            self.hints.append(f"{len(found)} of the {len(missing)} missing images exist under {candidate}: {why}")
            self.explained.add("missing_image")
            return

    def check_pixels(self, path: Path, image: dict, where: str) -> None:
        try:
            with Image.open(path) as im:
                im.verify()  # cheap structural check; catches broken PNG chunks
            with Image.open(path) as im:
                size, mode = im.size, im.mode
                # JPEG draft decodes at 1/8 scale: every byte is still read (truncation is caught), ~2x faster.
                im.draft(mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error...
            self.add("corrupt_image", where, f"cannot decode ({type(exc).__name__}: {exc})",
                     "replace the file with an intact copy or remove the record", file=str(path))
            return
        expected = (image["width"], image["height"])
        if all(_is_int(v) for v in expected) and size != expected:
            swapped = " (swapped: EXIF rotation?)" if size == expected[::-1] else ""
            self.add("size_mismatch", where, f"file is {size[0]}x{size[1]}, json says {expected[0]}x{expected[1]}"
                     f"{swapped}", "set width/height to the file's size (boxes must match the pixels on disk)",
                     file=str(path))
        if mode != "RGB":
            self.add("non_rgb", where, f"image mode is {mode}, not RGB",
                     "none needed: the loader converts to RGB (convert the file if other tools need RGB)",
                     severity="warning", file=str(path))


def check_dataset(annotation_file: Path, images_dir: Path, *, check_pixels: bool = True,
                  progress: bool = True) -> CheckReport:
    """Validate a COCO-format detection dataset; never raises for bad data.

    Args:
        annotation_file: the ``instances_*.json`` file.
        images_dir: folder that ``file_name`` entries are relative to.
        check_pixels: open and decode every image (catches corrupt files, wrong sizes, non-RGB modes).
        progress: show a tqdm bar while images are decoded.
    Returns:
        A CheckReport with every problem found and the summary counts.
    """
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    checker = _Checker(annotation_file, images_dir)
    report = CheckReport(annotation_file, images_dir, checker.problems, hints=checker.hints,
                         explained=checker.explained)
    data = checker.load_json()
    if data is _UNREADABLE:
        return report
    if nesting_depth_exceeds(data):
        checker.add("invalid_json", "-", f"{annotation_file.name} nests lists or objects more than {MAX_JSON_DEPTH} "
                    "levels deep (a COCO file nests a few: images, a record, its bbox)",
                    "export the file again, or remove the deeply nested values")
        return report
    if not isinstance(data, dict):
        checker.add("not_object", "-", f"top level is a JSON {type(data).__name__}, not an object",
                    "a COCO file is an object with 'images', 'annotations' and 'categories'")
        return report
    categories = checker.section(data, "categories")
    images = checker.section(data, "images")
    annotations = checker.section(data, "annotations")
    category_names = checker.check_categories(categories or [])
    images_by_id = checker.check_images(images) if images is not None else None
    summary = checker.check_annotations(annotations or [], images_by_id, category_names)
    if images_by_id:
        checker.check_files(images_by_id, check_pixels=check_pixels, progress=progress)
    report.summary = {"images": len(images or []), "annotations": len(annotations or []),
                      "categories": len(categories or []), "category_names": category_names, **summary}
    return report


def _subfolders(folder: Path, limit: int = 50) -> list[Path]:
    """Up to ``limit`` folders directly inside ``folder`` (not through links: never wander into a shared store)."""
    found = []
    try:
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                found.append(child)
                if len(found) == limit:
                    break
    except OSError:
        return []
    return found


def main_check(annotation_file: Path | str, images_dir: Path | str, *, check_pixels: bool = True,
               progress: bool = True) -> int:
    """What ``compresskit data check`` runs: problems (one line each) to stderr, a clean dataset's summary to stdout.

    Args:
        annotation_file, images_dir, check_pixels, progress: as for ``check_dataset``.
    Returns:
        The exit code: 0 when there are no errors (warnings allowed), 1 otherwise.
    """
    report = check_dataset(Path(annotation_file), Path(images_dir), check_pixels=check_pixels, progress=progress)
    if report.problems or report.hints:
        print(report.format_problems(), file=sys.stderr)
    if report.ok:
        print(report.format_summary())
        print(f"OK with {len(report.warnings)} warning(s)" if report.warnings else "OK")
        return 0
    print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s) in {annotation_file}; fix the errors "
          "above and run `compresskit data check` again", file=sys.stderr)
    return 1
