"""The COCO subset builder and the downloader, against COCO files served from a local HTTP server.

The files are the ``coco_tiny`` source (the real 16-image fixture when present, else a synthetic one in the same
layout), so every expected value here is derived from the source's own JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from compresskit.data.coco_subset import (DEFAULT_RECIPES, SELECTION_RULE, SubsetRecipe, build_coco_subset,
                                          load_recipe, select_subset, verify_subset)
from compresskit.data.download import download, extract_zip_member
from compresskit.errors import DatasetError, DownloadError

REPO = Path(__file__).resolve().parents[1]
MEMBER = "annotations/instances_train2017.json"
ZIP_NAME = "annotations_trainval2017.zip"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source(coco_tiny: Path) -> dict:
    return json.loads((coco_tiny / MEMBER).read_text())


def _images_per_category(source: dict) -> dict[int, set[int]]:
    """Category id -> ids of the images with a non-crowd annotation of it (the selection rule's candidates)."""
    images: dict[int, set[int]] = {}
    for ann in source["annotations"]:
        if not ann["iscrowd"]:
            images.setdefault(ann["category_id"], set()).add(ann["image_id"])
    return images


def _most_common_categories(source: dict, count: int) -> list[dict]:
    """The ``count`` categories found in most images (ties by id), in the source's category order."""
    per_category = _images_per_category(source)
    picked = sorted(per_category, key=lambda cid: (-len(per_category[cid]), cid))[:count]
    return [category for category in source["categories"] if category["id"] in picked]


def _image_path(coco_tiny: Path, index: int) -> str:
    """The URL path of the source's ``index``-th image, e.g. ``/train2017/000000391895.jpg``."""
    return f"/train2017/{_source(coco_tiny)['images'][index]['file_name']}"


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, payload in members.items():
            zipped.writestr(name, payload)
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.root`` with Range support; can cut a file's first transfer half-way or ignore Range."""

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        server = self.server
        path = server.root / self.path.lstrip("/")
        with server.lock:
            server.requests.append((self.path, self.headers.get("Range")))
        if ".." in path.parts or not path.is_file():  # the served train2017/ is a symlink: no resolve()
            self.send_error(404)
            return
        payload = path.read_bytes()
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not server.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(payload):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with server.lock:
            cut = self.path in server.cut_once and self.path not in server.cut_done
            if cut:
                server.cut_done.add(self.path)
        if cut:  # promise the full length, deliver half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path, coco_tiny: Path):
    """A local stand-in for images.cocodataset.org: /annotations/*.zip and /train2017/*.jpg."""
    root = tmp_path / "site"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").symlink_to(coco_tiny / "train2017", target_is_directory=True)
    (root / "annotations" / ZIP_NAME).write_bytes(
        _zip_bytes({MEMBER: (coco_tiny / MEMBER).read_bytes()}))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.lock = root, [], threading.Lock()
    httpd.cut_once, httpd.cut_done, httpd.ignore_range = set(), set(), False
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _build(server, out: Path, recipe: SubsetRecipe, zip_name: str = ZIP_NAME) -> Path:
    return build_coco_subset(out, recipe, annotations_url=f"{server.base}/annotations/{zip_name}",
                             images_base_url=server.base, cache_dir=out.parent / "cache", progress=False)


def test_end_to_end_build_verifies_and_keeps_gapped_ids(server, tmp_path: Path, coco_tiny: Path) -> None:
    from pycocotools.coco import COCO

    source = _source(coco_tiny)
    categories = _most_common_categories(source, 3)
    wanted = [category["id"] for category in categories]
    assert wanted != list(range(wanted[0], wanted[0] + 3)), "the test needs gapped category ids"
    recipe = SubsetRecipe(split="train2017", images=6, categories=[c["name"] for c in categories], seed=3)
    out = tmp_path / "subset"
    manifest_path = _build(server, out, recipe)
    manifest = json.loads(manifest_path.read_text())
    assert manifest_path == out / "manifest.json"
    assert verify_subset(out) == []
    assert manifest["recipe"] == recipe.to_json()
    assert manifest["source_annotations"]["member"] == MEMBER
    assert manifest["source_annotations"]["sha256"] == _sha256(coco_tiny / MEMBER)
    assert manifest["annotations_zip_sha256"] == _sha256(server.root / "annotations" / ZIP_NAME)
    assert manifest["created_by"].startswith("compresskit ")
    assert len(manifest["images"]) == 6
    for entry in manifest["images"]:  # recompute every checksum; the files are the served originals
        assert entry["file_name"].startswith("train2017/")
        assert entry["sha256"] == _sha256(out / entry["file_name"])
        assert (out / entry["file_name"]).read_bytes() == (coco_tiny / entry["file_name"]).read_bytes()
    coco = COCO(str(out / "annotations" / "instances_train2017.json"))
    assert sorted(coco.getCatIds()) == sorted(wanted)
    assert sorted(coco.getImgIds()) == [entry["id"] for entry in manifest["images"]]
    assert all(ann["category_id"] in wanted for ann in coco.dataset["annotations"])
    assert all(coco.getAnnIds(imgIds=[image_id], iscrowd=False) for image_id in coco.getImgIds())
    # the rule in the recipe's own words, reproduced independently
    candidates = sorted({a["image_id"] for a in source["annotations"]
                         if a["category_id"] in wanted and not a["iscrowd"]})
    assert coco.getImgIds() and sorted(random.Random(3).sample(candidates, 6)) == sorted(coco.getImgIds())
    assert not list(tmp_path.glob("subset.tmp-*")) and not list(tmp_path.glob("subset.old-*"))
    # tampering is detected
    (out / manifest["images"][0]["file_name"]).write_bytes(b"not a jpeg")
    (out / manifest["images"][1]["file_name"]).unlink()
    problems = verify_subset(out)
    assert len(problems) == 2 and "sha256" in problems[0] and "missing" in problems[1]


def test_same_recipe_same_manifest_other_seed_other_selection(server, tmp_path: Path) -> None:
    recipe = SubsetRecipe(split="train2017", images=5, seed=0)
    first = _build(server, tmp_path / "a", recipe).read_bytes()
    second = _build(server, tmp_path / "b", recipe).read_bytes()
    assert first == second
    served = len(server.requests)
    assert _build(server, tmp_path / "a", recipe).read_bytes() == first
    assert len(server.requests) == served  # cached: nothing fetched again
    other = json.loads(_build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=5, seed=1)).read_text())
    assert [i["id"] for i in other["images"]] != [i["id"] for i in json.loads(first)["images"]]
    assert verify_subset(tmp_path / "a") == [] and not list(tmp_path.glob("a.old-*"))


def test_interrupted_download_resumes_with_range(server, tmp_path: Path, coco_tiny: Path) -> None:
    name = _image_path(coco_tiny, 0)
    server.cut_once.add(name)
    dest = download(server.base + name, tmp_path / "img.jpg", retries=2, backoff_s=0.01, progress=False)
    payload = (coco_tiny / name.lstrip("/")).read_bytes()
    assert dest.read_bytes() == payload
    ranges = [header for path, header in server.requests if path == name]
    assert ranges == [None, f"bytes={len(payload) // 2}-"]  # the second request asks for the half it lacks
    assert not (tmp_path / "img.jpg.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path, coco_tiny: Path) -> None:
    name = _image_path(coco_tiny, 1)
    server.cut_once.add(name)
    server.ignore_range = True
    dest = download(server.base + name, tmp_path / "img.jpg", retries=2, backoff_s=0.01, progress=False)
    assert dest.read_bytes() == (coco_tiny / name.lstrip("/")).read_bytes()
    assert len([path for path, _ in server.requests if path == name]) == 2


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_zip_is_a_clear_error_and_leaves_out_alone(server, tmp_path: Path, damage: str) -> None:
    good = server.root / "annotations" / ZIP_NAME
    bad = server.root / "annotations" / "bad.zip"
    payload = good.read_bytes()
    bad.write_bytes(random.Random(0).randbytes(4096) if damage == "random" else payload[: len(payload) // 2])
    out = tmp_path / "subset"
    with pytest.raises(DownloadError, match="(?i)corrupt archive.*delete .*bad.zip and retry"):
        _build(server, out, SubsetRecipe(split="train2017", images=4), zip_name="bad.zip")
    assert not out.exists() and not list(tmp_path.glob("subset.tmp-*"))
    # a good subset already in place survives a failed rebuild for another recipe
    _build(server, out, SubsetRecipe(split="train2017", images=4))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DownloadError, match="(?i)corrupt archive"):
        _build(server, out, SubsetRecipe(split="train2017", images=4, seed=7), zip_name="bad.zip")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert verify_subset(out) == [] and not list(tmp_path.glob("subset.tmp-*"))


def test_zip_with_parent_path_member_is_rejected(tmp_path: Path, coco_tiny: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({MEMBER: (coco_tiny / MEMBER).read_bytes(), "../evil.json": b"{}"}))
    with pytest.raises(DownloadError, match="(?i)unsafe"):
        extract_zip_member(archive, MEMBER, tmp_path / "x" / "instances.json")
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "x" / "instances.json").exists()


def test_zip_with_parent_path_member_fails_the_build(server, tmp_path: Path, coco_tiny: Path) -> None:
    (server.root / "annotations" / "evil.zip").write_bytes(
        _zip_bytes({MEMBER: (coco_tiny / MEMBER).read_bytes(), "../evil.json": b"{}"}))
    with pytest.raises(DownloadError, match="(?i)unsafe"):
        _build(server, tmp_path / "subset", SubsetRecipe(split="train2017", images=2), zip_name="evil.zip")
    assert not (tmp_path / "subset").exists() and not (tmp_path / "evil.json").exists()


def test_offline_is_one_clear_fast_error(tmp_path: Path, monkeypatch) -> None:
    import socket
    from types import SimpleNamespace

    from compresskit.data import download as downloader

    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/annotations/annotations_trainval2017.zip"
    waits, attempts = [], []
    fetch_once = downloader._fetch_once
    monkeypatch.setattr(downloader, "time", SimpleNamespace(sleep=waits.append))
    monkeypatch.setattr(downloader, "_fetch_once", lambda *args: attempts.append(args[0]) or fetch_once(*args))
    with pytest.raises(DownloadError) as raised:
        download(url, tmp_path / "a.zip", retries=4, backoff_s=30.0, progress=False)
    # A refused connection is retried once after the first back-off, not four times over 30 + 60 + 120 + 240 s.
    assert attempts == [url, url] and waits == [30.0]
    message = str(raised.value)
    assert "offline" in message and url in message and "--coco-root" in message and "embedded" in message
    assert not (tmp_path / "a.zip").exists()


def test_coco_root_copies_without_a_server(tmp_path: Path, coco_tiny: Path) -> None:
    out = tmp_path / "local"
    categories = _most_common_categories(_source(coco_tiny), 2)
    # asked for in reverse: the subset keeps the source's category order, not the recipe's
    recipe = SubsetRecipe(split="train2017", images=4, categories=[c["name"] for c in categories[::-1]], seed=5)
    manifest = json.loads(build_coco_subset(out, recipe, coco_root=coco_tiny, progress=False).read_text())
    assert manifest["source_annotations"]["path"] == str((coco_tiny / MEMBER).resolve())
    assert "annotations_zip_sha256" not in manifest and verify_subset(out) == []
    for entry in manifest["images"]:
        assert (out / entry["file_name"]).read_bytes() == (coco_tiny / entry["file_name"]).read_bytes()
    document = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert set(document) >= {"info", "licenses", "images", "annotations", "categories"}
    assert document["categories"] == categories


def test_recipe_errors_name_the_fix(tmp_path: Path, coco_tiny: Path) -> None:
    source = _source(coco_tiny)
    last_name = source["categories"][-1]["name"]
    with pytest.raises(DatasetError, match=f"valid names are.*{re.escape(last_name)}"):
        build_coco_subset(tmp_path / "x", SubsetRecipe(split="train2017", images=2, categories=["unicorn"]),
                          coco_root=coco_tiny, progress=False)
    per_category = _images_per_category(source)
    rare = min(per_category, key=lambda cid: (len(per_category[cid]), cid))
    rare_name = next(c["name"] for c in source["categories"] if c["id"] == rare)
    found = len(per_category[rare])
    with pytest.raises(DatasetError, match=f"only {found} images"):
        build_coco_subset(tmp_path / "x", SubsetRecipe(split="train2017", images=found + 1, categories=[rare_name]),
                          coco_root=coco_tiny, progress=False)
    everything = len(set().union(*per_category.values()))
    with pytest.raises(DatasetError, match=f"only {everything} images"):
        select_subset(source, SubsetRecipe(split="train2017", images=everything + 1))
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_sha_mismatch_deletes_the_download(server, tmp_path: Path, coco_tiny: Path) -> None:
    url = server.base + _image_path(coco_tiny, 2)
    with pytest.raises(DownloadError, match="(?i)checksum mismatch"):
        download(url, tmp_path / "img.jpg", expected_sha256="0" * 64, progress=False)
    assert not (tmp_path / "img.jpg").exists() and not (tmp_path / "img.jpg.part").exists()
    good = download(url, tmp_path / "img.jpg", expected_sha256=_sha256(server.root / url.split("/", 3)[3]),
                    progress=False)
    assert good.exists()


def test_http_404_fails_without_retries(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.base + "/nope.zip", tmp_path / "nope.zip", backoff_s=10, progress=False)


def test_committed_recipes_equal_the_defaults() -> None:
    for recipe, filename in [(DEFAULT_RECIPES["val2017"], "coco-val2017-500.json"),
                             (DEFAULT_RECIPES["train2017"], "coco-train2017-2000.json")]:
        committed = REPO / "data" / "recipes" / filename
        assert SubsetRecipe.from_json(json.loads(committed.read_text())) == recipe
        assert load_recipe(committed) == recipe == load_recipe(filename.removesuffix(".json"))
        assert load_recipe(recipe.split) == recipe
    assert DEFAULT_RECIPES["val2017"] == SubsetRecipe(split="val2017", images=500, categories=None, seed=0)
    assert DEFAULT_RECIPES["train2017"] == SubsetRecipe(split="train2017", images=2000, categories=None, seed=0)
    assert DEFAULT_RECIPES["val2017"].selection == SELECTION_RULE
    with pytest.raises(DatasetError, match="Unknown recipe keys"):
        SubsetRecipe.from_json({"split": "val2017", "images": 3, "colour": "red"})


def _changed_archive(coco_tiny: Path) -> bytes:
    """A valid annotation zip with different bytes: the same document with another ``info`` description."""
    document = _source(coco_tiny)
    document["info"]["description"] = "re-exported"
    return _zip_bytes({MEMBER: json.dumps(document).encode()})


def test_first_download_pins_the_archive_and_a_changed_one_is_refused(server, tmp_path: Path,
                                                                      coco_tiny: Path) -> None:
    served = server.root / "annotations" / ZIP_NAME
    first_sha256 = _sha256(served)
    manifest = json.loads(_build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=3)).read_text())
    assert manifest["annotations_zip_sha256"] == first_sha256
    (archive,) = (tmp_path / "cache").glob("*.zip")
    pin = archive.with_name(archive.name + ".sha256")
    assert pin.read_text() == f"{first_sha256}  {archive.name}\n"  # sha256sum's format
    # The server now sends another archive; the cached copy is gone, so the next build must download again.
    served.write_bytes(_changed_archive(coco_tiny))
    archive.unlink()
    with pytest.raises(DownloadError) as refused:
        _build(server, tmp_path / "b", SubsetRecipe(split="train2017", images=3, seed=1))
    message = str(refused.value)
    assert f"expected sha256 {first_sha256}, got {_sha256(served)}" in message
    assert f"{pin} pinned sha256 {first_sha256}" in message and f"delete {pin}" in message
    assert not (tmp_path / "b").exists() and not archive.exists() and not list(archive.parent.glob("*.part"))
    assert pin.read_text().split()[0] == first_sha256
    # The subset built from the pinned archive is still reused as it is.
    assert _build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=3)).parent == tmp_path / "a"
    # Resetting the pin as the message says accepts (and pins) the new archive.
    pin.unlink()
    manifest = json.loads(_build(server, tmp_path / "b", SubsetRecipe(split="train2017", images=3, seed=1))
                          .read_text())
    assert manifest["annotations_zip_sha256"] == _sha256(served) != first_sha256
    assert pin.read_text().split()[0] == _sha256(served)


def test_cached_archive_must_match_the_pin(server, tmp_path: Path, coco_tiny: Path) -> None:
    original = (server.root / "annotations" / ZIP_NAME).read_bytes()
    _build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=3))
    (archive,) = (tmp_path / "cache").glob("*.zip")
    archive.write_bytes(_changed_archive(coco_tiny))  # altered on disk: not the archive that was pinned
    fetched = len([path for path, _ in server.requests if path.endswith(ZIP_NAME)])
    manifest = json.loads(_build(server, tmp_path / "b", SubsetRecipe(split="train2017", images=3, seed=1))
                          .read_text())
    assert len([path for path, _ in server.requests if path.endswith(ZIP_NAME)]) == fetched + 1  # fetched again
    assert archive.read_bytes() == original
    assert manifest["annotations_zip_sha256"] == hashlib.sha256(original).hexdigest()
    pin = archive.with_name(archive.name + ".sha256")
    pin.write_text("edited by hand\n")
    with pytest.raises(DownloadError, match=f"{re.escape(str(pin))} holds no sha256 digest; delete it"):
        _build(server, tmp_path / "c", SubsetRecipe(split="train2017", images=3, seed=2))


def test_recipe_sha256_is_enforced(server, tmp_path: Path, coco_tiny: Path) -> None:
    good = _sha256(server.root / "annotations" / ZIP_NAME)
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=f"annotations_sha256 {wrong} .*is enforced"):
        _build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=3, annotations_sha256=wrong))
    assert not (tmp_path / "a").exists() and not list((tmp_path / "cache").glob("*.sha256"))  # nothing pinned
    recipe = SubsetRecipe(split="train2017", images=3, annotations_sha256=good.upper())  # case does not matter
    manifest = json.loads(_build(server, tmp_path / "a", recipe).read_text())
    assert manifest["recipe"]["annotations_sha256"] == good == manifest["annotations_zip_sha256"]
    # A recipe's sha256 wins over the pin of the archive already cached, and over the subset built from it.
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    with pytest.raises(DownloadError, match="is enforced"):
        _build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=3, annotations_sha256=wrong))
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before
    # The same selection without a sha256 reuses the subset (the pin is not part of what is selected).
    served = len(server.requests)
    _build(server, tmp_path / "a", SubsetRecipe(split="train2017", images=3))
    assert len(server.requests) == served


def test_a_sha256_argument_must_agree_with_the_recipe(tmp_path: Path, coco_tiny: Path) -> None:
    # (a recipe's own malformed sha256 is refused when it is built: tests/test_configs.py)
    recipe = SubsetRecipe(split="train2017", images=2, annotations_sha256="a" * 64)
    with pytest.raises(DatasetError, match="contradicts the recipe"):
        build_coco_subset(tmp_path / "x", recipe, annotations_sha256="b" * 64, coco_root=coco_tiny, progress=False)
    assert not (tmp_path / "x").exists()
