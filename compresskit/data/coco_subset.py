"""A pinned subset of COCO 2017, built from the official sources (or a local COCO install) by a JSON recipe.

The recipe says which split, how many images, which categories and which seed; the selection rule turns that
into the same image ids on every machine. The first build writes ``manifest.json`` beside the data with the
picked ids and every file's sha256, so later runs (and ``verify_subset``) can prove the data is unchanged.
COCO publishes no checksum for its annotation archive, so its sha256 is pinned: by the recipe's
``annotations_sha256`` when set, else on first use in ``<archive>.sha256`` beside the cached archive.
Introduced in ``00_setup_and_data.ipynb`` (the ``coco`` profile).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version as package_version
from pathlib import Path

from tqdm.auto import tqdm

from compresskit.data.download import (download, extract_zip_member, pin_file, read_pin, require_free_space,
                                       write_pin)
from compresskit.data.files import atomic_write_json, is_sha256, sha256_file
from compresskit.data.safe_paths import file_name_problem
from compresskit.errors import DatasetError, DownloadError
from compresskit.settings import data_root

OFFICIAL_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
OFFICIAL_IMAGES_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("train2017", "val2017")
SELECTION_RULE = (
    "Candidates are the images with at least one non-crowd annotation of the requested categories (all "
    "categories when none are given), sorted by image id; random.Random(seed).sample(candidates, images) picks "
    "the subset, and the picked ids are sorted. Only the requested categories and their annotations are kept, "
    "with COCO's original category ids.")
IMAGE_DOWNLOAD_THREADS = 8  # many small files: a few parallel connections hide the per-request latency
# What a build writes beside its output before it knows the exact sizes, for the disk-space check: the split's
# annotation JSON as extracted from the zip (the zip itself is checked against its Content-Length as it downloads),
# and the mean size of a COCO 2017 image (train2017: 18 GB for 118,287 images).
ANNOTATION_JSON_BYTES = {"train2017": 470_000_000, "val2017": 20_000_000}
MEAN_IMAGE_BYTES = 165_000


@dataclass
class SubsetRecipe:
    """What to take from COCO 2017. Round-trips through JSON (``to_json``/``from_json``)."""

    split: str  # "train2017" | "val2017"
    images: int
    categories: list[str] | None = None  # COCO category names; None keeps all 80
    seed: int = 0
    # The annotation archive's sha256, enforced when set; None pins the first archive downloaded (see module doc).
    annotations_sha256: str | None = None
    selection: str = SELECTION_RULE  # recorded so a changed rule never matches an old cached build

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DatasetError(f"Recipe split {self.split!r} is not one of {', '.join(SPLITS)}.")
        if int(self.images) < 1:
            raise DatasetError(f"Recipe asks for {self.images} images; ask for at least 1.")
        if self.categories is not None and not self.categories:
            raise DatasetError("Recipe has an empty category list; leave it out (null) to keep all categories.")
        if self.annotations_sha256 is not None:
            self.annotations_sha256 = _checked_sha256(self.annotations_sha256, what="Recipe annotations_sha256")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "SubsetRecipe":
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise DatasetError(f"Unknown recipe keys {unknown}; valid keys are {sorted(known)}.")
        return cls(**doc)

    @property
    def name(self) -> str:
        """A folder name that differs whenever the selection does, e.g. ``coco-val2017-500``."""
        name = f"coco-{self.split}-{self.images}"
        if self.seed:
            name += f"-seed{self.seed}"
        if self.categories:
            name += "-cats" + hashlib.sha1("\n".join(self.categories).encode()).hexdigest()[:8]
        return name


def _checked_sha256(value: object, *, what: str) -> str:
    digest = value.strip().lower() if isinstance(value, str) else ""
    if not is_sha256(digest):
        raise DatasetError(f"{what} {value!r} is not a sha256 digest (64 hex characters); copy it from "
                           f"`sha256sum annotations_trainval2017.zip` or leave it out (null).")
    return digest


DEFAULT_RECIPES = {
    "val2017": SubsetRecipe(split="val2017", images=500),  # evaluation
    "train2017": SubsetRecipe(split="train2017", images=2000),  # fine-tuning, distillation, calibration
}


def profile_recipe(split: str) -> SubsetRecipe:
    """The recipe the coco profile builds for ``split`` (``train2017`` or ``val2017``): the pinned one, or
    ``<COMPRESSKIT_COCO_RECIPES>/<split>.json`` when that variable names a folder of your own recipes."""
    from compresskit.settings import COCO_RECIPES_ENV, coco_recipes_dir

    folder = coco_recipes_dir()
    if folder is None:
        return DEFAULT_RECIPES[split]
    path = folder / f"{split}.json"
    if not path.is_file():
        raise DatasetError(f"{COCO_RECIPES_ENV} names {folder}, which has no {path.name}; add the recipe (see "
                           "data/recipes/ for the format) or unset the variable for the pinned subsets")
    recipe = load_recipe(path)
    if recipe.split != split:
        raise DatasetError(f"{path} is a recipe for {recipe.split}, not {split}")
    return recipe


def load_recipe(name_or_path: str | Path) -> SubsetRecipe:
    """A recipe by name (``val2017``, ``train2017``, ``coco-val2017-500``, ``coco-train2017-2000``) or JSON path.

    Args:
        name_or_path: a default recipe's split or name, or the path of a recipe JSON file.

    Returns:
        The recipe.
    """
    key = str(name_or_path)
    by_name = {recipe.name: recipe for recipe in DEFAULT_RECIPES.values()}
    if key in DEFAULT_RECIPES or key in by_name:
        return SubsetRecipe.from_json((DEFAULT_RECIPES.get(key) or by_name[key]).to_json())  # a copy
    path = Path(name_or_path)
    try:
        return SubsetRecipe.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise DatasetError(f"Cannot read recipe {key!r} ({error}); give one of "
                           f"{sorted([*DEFAULT_RECIPES, *by_name])} or a recipe JSON file.") from error


def default_subset_dir(recipe: SubsetRecipe) -> Path:
    """Where a subset lives by default: ``<data_root()>/<recipe.name>``."""
    return data_root() / recipe.name


def select_subset(document: dict, recipe: SubsetRecipe) -> dict:
    """Apply the recipe's selection rule to a full COCO annotation document.

    Args:
        document: a COCO instances JSON (info, licenses, images, annotations, categories).
        recipe: what to keep.

    Returns:
        A new COCO document with the picked images (file_name still as in ``document``), the kept categories
        (original ids) and their annotations.

    Raises:
        DatasetError: unknown category names, or fewer matching images than requested.
    """
    categories = document["categories"]
    if recipe.categories is not None:
        valid = {category["name"] for category in categories}
        unknown = [name for name in recipe.categories if name not in valid]
        if unknown:
            raise DatasetError(f"Unknown COCO categories {unknown}; valid names are: "
                               f"{', '.join(category['name'] for category in categories)}.")
        categories = [category for category in categories if category["name"] in recipe.categories]
    kept_ids = {category["id"] for category in categories}
    annotations = [ann for ann in document["annotations"] if ann["category_id"] in kept_ids]
    candidates = sorted({ann["image_id"] for ann in annotations if not ann.get("iscrowd", 0)})
    if len(candidates) < recipe.images:
        raise DatasetError(f"The recipe asks for {recipe.images} images, but only {len(candidates)} images of "
                           f"{recipe.split} have a non-crowd annotation of the requested categories; "
                           f"ask for at most {len(candidates)}.")
    picked = set(random.Random(recipe.seed).sample(candidates, recipe.images))
    images = sorted((image for image in document["images"] if image["id"] in picked), key=lambda im: im["id"])
    info = dict(document.get("info") or {})
    info["compresskit_subset"] = recipe.to_json()
    return {"info": info, "licenses": document.get("licenses", []), "images": images,
            "annotations": [ann for ann in annotations if ann["image_id"] in picked], "categories": categories}


def verify_subset(out: Path) -> list[str]:
    """Check a built subset against its manifest.

    Args:
        out: the subset folder (holding ``manifest.json``).

    Returns:
        Human-readable problems (missing files, checksum mismatches); empty when the subset is intact.
    """
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        expected = [(manifest["annotations_file"]["path"], manifest["annotations_file"]["sha256"])]
        expected += [(image["file_name"], image["sha256"]) for image in manifest["images"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"{out / 'manifest.json'}: missing or unreadable ({error}); rebuild the subset."]
    problems = []
    for relative, sha256 in expected:
        unsafe = file_name_problem(relative)
        if unsafe is not None:  # a tampered manifest must not make the check read (hash) files elsewhere
            problems.append(f"{out / 'manifest.json'}: entry {unsafe[0]}; rebuild the subset.")
            continue
        path = out / relative
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != sha256:
            problems.append(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
    return problems


def _is_built(out: Path, recipe: SubsetRecipe, annotations_sha256: str | None) -> bool:
    """Whether ``out`` holds an intact build of the same selection, made from the pinned archive if one is set."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        built = dict(manifest["recipe"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    wanted = recipe.to_json()
    for doc in (built, wanted):  # the pin says which archive, not what to select; older manifests lack it
        doc.pop("annotations_sha256", None)
    built_from = manifest.get("annotations_zip_sha256")  # absent for a build copied from a local COCO install
    if annotations_sha256 is not None and built_from is not None and built_from != annotations_sha256:
        return False
    return built == wanted and not verify_subset(out)


def _pin_advice(url: str, archive: Path, expected: str, explicit: bool) -> str:
    """What to do when the annotation archive does not match its pin, naming where the pin came from."""
    if explicit:
        return (f"annotations_sha256 {expected} (from the recipe or the caller) is enforced. If COCO has replaced "
                f"the archive on purpose, update annotations_sha256 in the recipe; otherwise check the URL {url}.")
    pin = pin_file(archive)
    return (f"{pin} pinned sha256 {expected} when this archive was first downloaded, and the server now sends a "
            f"different file. If you trust the new archive, delete {pin} (and {archive} if present) and run again "
            f"to pin it; to require a specific archive, set annotations_sha256 in the recipe.")


def _source_annotations(work: Path, recipe: SubsetRecipe, annotations_url: str, annotations_sha256: str | None,
                        coco_root: Path | None, cache_dir: Path | None, progress: bool) -> tuple[Path, dict]:
    """The full annotation JSON of the split (a local file or extracted from the official zip) and its provenance."""
    member = f"annotations/instances_{recipe.split}.json"
    if coco_root is not None:
        path = Path(coco_root) / member
        if not path.is_file():
            raise DatasetError(f"{path} not found: --coco-root must hold annotations/ and {recipe.split}/ as in "
                               f"the official COCO 2017 layout.")
        return path, {"path": str(path.resolve()), "member": member, "sha256": sha256_file(path)}
    # One cache for every subset: train and val come from the same ~250 MB zip. The URL hash keeps mirrors apart.
    cache = Path(cache_dir) if cache_dir is not None else data_root() / "downloads"
    url_key = hashlib.sha1(annotations_url.encode()).hexdigest()[:10]
    archive = cache / f"{url_key}-{Path(annotations_url).name or 'annotations.zip'}"
    pinned = read_pin(archive)
    expected = annotations_sha256 or pinned
    advice = (_pin_advice(annotations_url, archive, expected, explicit=annotations_sha256 is not None)
              if expected else None)
    download(annotations_url, archive, expected_sha256=expected, progress=progress, mismatch_advice=advice)
    extracted = extract_zip_member(archive, member, work / ".source" / Path(member).name)
    archive_sha256 = expected or sha256_file(archive)  # download() has checked an expected sha256 already
    if archive_sha256 != pinned:  # pin only an archive that proved usable, so a corrupt one is never trusted
        write_pin(archive, archive_sha256)
    return extracted, {"url": annotations_url, "member": member, "sha256": sha256_file(extracted),
                       "annotations_zip_sha256": archive_sha256}


def _fetch_images(images: list[dict], target: Path, split: str, images_base_url: str, coco_root: Path | None,
                  progress: bool) -> None:
    """Copy (coco_root) or download every image into ``target``; raises on the first failure."""
    def fetch(image: dict) -> None:
        name = image["file_name"]
        destination = target / name
        if coco_root is not None:
            source = Path(coco_root) / split / name
            if not source.is_file():
                raise DatasetError(f"{source} (image id {image['id']}) is missing from the local COCO install.")
            shutil.copyfile(source, destination)
            return
        url = image.get("coco_url") or f"{OFFICIAL_IMAGES_BASE_URL}/{split}/{name}"
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            # urllib also opens file:// and ftp:// URLs: an annotation file must not make the kit copy local files
            raise DatasetError(f"Image id {image['id']} has coco_url {url!r:.100}, not an http(s) URL; use the "
                               "official annotations or a local COCO install (--coco-root).")
        if url.startswith(OFFICIAL_IMAGES_BASE_URL):
            url = images_base_url.rstrip("/") + url[len(OFFICIAL_IMAGES_BASE_URL):]
        download(url, destination, progress=False)

    target.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=IMAGE_DOWNLOAD_THREADS) as pool, \
            tqdm(total=len(images), desc=f"{split} images", unit="img", disable=not progress) as bar:
        futures = [pool.submit(fetch, image) for image in images]
        try:
            for future in futures:
                future.result()
                bar.update()
        except BaseException:
            for future in futures:  # do not start the rest once one image has failed
                future.cancel()
            raise


def _swap_into_place(work: Path, out: Path) -> None:
    """Move the finished ``work`` folder to ``out``, replacing an old ``out`` with as small a gap as renames allow."""
    old = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        out.rename(old)
    try:
        work.rename(out)
    except BaseException:
        if old.exists():
            old.rename(out)  # put the previous subset back
        raise
    shutil.rmtree(old, ignore_errors=True)


def build_coco_subset(out: Path, recipe: SubsetRecipe, *, annotations_url: str = OFFICIAL_ANNOTATIONS_URL,
                      images_base_url: str = OFFICIAL_IMAGES_BASE_URL, coco_root: Path | None = None,
                      annotations_sha256: str | None = None, cache_dir: Path | None = None,
                      progress: bool = True) -> Path:
    """Build (or reuse) the COCO 2017 subset described by ``recipe`` in ``out``.

    Layout: ``annotations/instances_{split}.json`` (file_name relative to ``out``), images in ``{split}/``,
    and ``manifest.json`` (recipe, sources, per-file sha256). Everything is built in a temporary sibling folder
    and moved into place only on success; on failure ``out`` is left as it was.

    Args:
        out: the subset folder.
        recipe: what to select.
        annotations_url: the annotations zip (official by default; a mirror works too).
        images_base_url: replaces ``http://images.cocodataset.org`` in the images' ``coco_url``.
        coco_root: a local COCO 2017 install to copy from instead of downloading.
        annotations_sha256: sha256 the annotations zip must have (as the recipe's ``annotations_sha256``; the two
            must agree when both are given). With neither, the first usable download is pinned in
            ``<cached zip>.sha256`` and every later download or reuse must match it.
        cache_dir: where the zip and its pin are cached (default ``data_root()/downloads``, shared by all subsets).
        progress: show tqdm bars.

    Returns:
        The path of the written (or already present) ``manifest.json``.

    Raises:
        DownloadError: offline, failed or corrupt downloads, or an archive that does not match its pin.
        DatasetError: bad recipe or local COCO install.
    """
    out = Path(out)
    if annotations_sha256 is not None:
        annotations_sha256 = _checked_sha256(annotations_sha256, what="annotations_sha256")
        if recipe.annotations_sha256 not in (None, annotations_sha256):
            raise DatasetError(f"annotations_sha256 {annotations_sha256} contradicts the recipe's "
                               f"{recipe.annotations_sha256}; give one of them.")
    annotations_sha256 = annotations_sha256 or recipe.annotations_sha256
    if _is_built(out, recipe, annotations_sha256):
        return out / "manifest.json"
    extracted = ANNOTATION_JSON_BYTES[recipe.split] if coco_root is None else 0  # a local install is read in place
    require_free_space(out.parent, extracted + recipe.images * MEAN_IMAGE_BYTES,
                       f"the COCO subset {recipe.name} ({recipe.images} images, estimated)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
        source_file, source = _source_annotations(work, recipe, annotations_url, annotations_sha256, coco_root,
                                                  cache_dir, progress)
        try:
            document = json.loads(source_file.read_text(encoding="utf-8"))
        except ValueError as error:
            kind = DatasetError if coco_root is not None else DownloadError
            raise kind(f"{source_file} is not valid JSON ({error}); replace it (or delete the cached zip) and "
                       f"retry.") from error
        subset = select_subset(document, recipe)
        del document  # the train2017 JSON is ~450 MB of Python objects
        for image in subset["images"]:  # COCO's names are plain file names; anything else could leave the folder
            name = image["file_name"]
            if file_name_problem(name) is not None or "/" in name or name == ".":
                raise DatasetError(f"Image id {image['id']} has an unexpected file_name {name!r:.100}; COCO 2017 "
                                   "names images like 000000000139.jpg: check the annotation source.")
        _fetch_images(subset["images"], work / recipe.split, recipe.split, images_base_url, coco_root, progress)
        for image in subset["images"]:
            image["file_name"] = f"{recipe.split}/{image['file_name']}"
        annotations_path = f"annotations/instances_{recipe.split}.json"
        atomic_write_json(work / annotations_path, subset)
        shutil.rmtree(work / ".source", ignore_errors=True)
        zip_sha256 = source.pop("annotations_zip_sha256", None)
        manifest = {"recipe": recipe.to_json(), "source_annotations": source,
                    **({"annotations_zip_sha256": zip_sha256} if zip_sha256 else {}),
                    "annotations_file": {"path": annotations_path, "sha256": sha256_file(work / annotations_path)},
                    "images": [{"id": image["id"], "file_name": image["file_name"],
                                "sha256": sha256_file(work / image["file_name"])} for image in subset["images"]],
                    "created_by": f"compresskit {package_version('compresskit')}"}
        atomic_write_json(work / "manifest.json", manifest, indent=1)  # written last: its presence means complete
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / "manifest.json"


def write_profile_split(out: Path | str, *, coco_root: Path | None = None, progress: bool = True) -> Path:
    """The coco profile's pinned subsets (``profile_recipe("train2017")`` and ``("val2017")``, built or reused in
    the data cache) as one split folder in the kit's layout, what ``train``, ``prune``, ``study`` and ``search``
    take as ``--data``: ``annotations/instances_train.json`` and ``instances_val.json`` as the subsets hold them,
    and ``train2017/`` and ``val2017/`` with the images hard-linked (copied where links are refused). Written in a
    temporary sibling folder and moved into place when complete, replacing an earlier one. ``coco_root``: a local
    COCO 2017 install to copy from (default ``COMPRESSKIT_COCO_ROOT``, else download). Returns ``out``.
    """
    from compresskit import settings
    from compresskit.data.split import place_image

    coco_root = coco_root if coco_root is not None else settings.coco_root()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
        for split, coco_split in (("train", "train2017"), ("val", "val2017")):
            recipe = profile_recipe(coco_split)
            subset = default_subset_dir(recipe)
            build_coco_subset(subset, recipe, coco_root=coco_root, progress=progress)
            (work / "annotations").mkdir(exist_ok=True)
            shutil.copy2(subset / "annotations" / f"instances_{coco_split}.json",
                         work / "annotations" / f"instances_{split}.json")
            (work / coco_split).mkdir()
            for image in sorted((subset / coco_split).iterdir()):
                place_image(image, work / coco_split / image.name, "link")
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out
