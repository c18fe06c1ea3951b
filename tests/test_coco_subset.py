"""The COCO subset builder and the downloader, against real COCO files served from a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import threading
import time
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
CATEGORIES = ["person", "bowl", "sink"]  # ids 1, 51, 81: gapped on purpose


def _coco_tiny() -> Path:
    env = os.environ.get("COMPRESSKIT_COCO_TINY")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "coco-tiny"


@pytest.fixture(scope="module")
def coco_tiny() -> Path:
    root = _coco_tiny()
    if not (root / MEMBER).is_file():
        pytest.skip(f"coco-tiny fixture not found at {root} (set COMPRESSKIT_COCO_TINY)")
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    (root / "annotations" / "annotations_trainval2017.zip").write_bytes(
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


def _build(server, out: Path, recipe: SubsetRecipe, zip_name: str = "annotations_trainval2017.zip") -> Path:
    return build_coco_subset(out, recipe, annotations_url=f"{server.base}/annotations/{zip_name}",
                             images_base_url=server.base, cache_dir=out.parent / "cache", progress=False)


def test_end_to_end_build_verifies_and_keeps_gapped_ids(server, tmp_path: Path, coco_tiny: Path) -> None:
    from pycocotools.coco import COCO

    recipe = SubsetRecipe(split="train2017", images=6, categories=CATEGORIES, seed=3)
    out = tmp_path / "subset"
    manifest_path = _build(server, out, recipe)
    manifest = json.loads(manifest_path.read_text())
    assert manifest_path == out / "manifest.json"
    assert verify_subset(out) == []
    assert manifest["recipe"] == recipe.to_json()
    assert manifest["source_annotations"]["member"] == MEMBER
    assert manifest["source_annotations"]["sha256"] == _sha256(coco_tiny / MEMBER)
    zip_file = server.root / "annotations" / "annotations_trainval2017.zip"
    assert manifest["annotations_zip_sha256"] == _sha256(zip_file)
    assert manifest["created_by"].startswith("compresskit ")
    assert len(manifest["images"]) == 6
    for entry in manifest["images"]:  # recompute every checksum; the files are the served originals
        assert entry["file_name"].startswith("train2017/")
        assert entry["sha256"] == _sha256(out / entry["file_name"])
        assert (out / entry["file_name"]).read_bytes() == (coco_tiny / entry["file_name"]).read_bytes()
    coco = COCO(str(out / "annotations" / "instances_train2017.json"))
    assert sorted(coco.getCatIds()) == [1, 51, 81]
    assert sorted(coco.getImgIds()) == [entry["id"] for entry in manifest["images"]]
    assert all(ann["category_id"] in (1, 51, 81) for ann in coco.dataset["annotations"])
    assert all(coco.getAnnIds(imgIds=[image_id], iscrowd=False) for image_id in coco.getImgIds())
    # the rule in the recipe's own words, reproduced independently
    source = json.loads((coco_tiny / MEMBER).read_text())
    wanted = {c["id"] for c in source["categories"] if c["name"] in CATEGORIES}
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
    name = "/train2017/000000391895.jpg"
    server.cut_once.add(name)
    dest = download(server.base + name, tmp_path / "img.jpg", retries=2, backoff_s=0.01, progress=False)
    assert dest.read_bytes() == (coco_tiny / name.lstrip("/")).read_bytes()
    ranges = [header for path, header in server.requests if path == name]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert not (tmp_path / "img.jpg.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path, coco_tiny: Path) -> None:
    name = "/train2017/000000005802.jpg"
    server.cut_once.add(name)
    server.ignore_range = True
    dest = download(server.base + name, tmp_path / "img.jpg", retries=2, backoff_s=0.01, progress=False)
    assert dest.read_bytes() == (coco_tiny / name.lstrip("/")).read_bytes()
    assert len([path for path, _ in server.requests if path == name]) == 2


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_zip_is_a_clear_error_and_leaves_out_alone(server, tmp_path: Path, damage: str) -> None:
    good = server.root / "annotations" / "annotations_trainval2017.zip"
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


def test_offline_is_one_clear_fast_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/annotations/annotations_trainval2017.zip"
    started = time.perf_counter()
    with pytest.raises(DownloadError) as raised:
        download(url, tmp_path / "a.zip", retries=2, backoff_s=0.01, progress=False)
    assert time.perf_counter() - started < 5
    message = str(raised.value)
    assert "offline" in message and url in message and "--coco-root" in message and "embedded" in message
    assert not (tmp_path / "a.zip").exists()


def test_coco_root_copies_without_a_server(tmp_path: Path, coco_tiny: Path) -> None:
    out = tmp_path / "local"
    recipe = SubsetRecipe(split="train2017", images=4, categories=["bottle", "person"], seed=5)
    manifest = json.loads(build_coco_subset(out, recipe, coco_root=coco_tiny, progress=False).read_text())
    assert manifest["source_annotations"]["path"] == str((coco_tiny / MEMBER).resolve())
    assert "annotations_zip_sha256" not in manifest and verify_subset(out) == []
    for entry in manifest["images"]:
        assert (out / entry["file_name"]).read_bytes() == (coco_tiny / entry["file_name"]).read_bytes()
    document = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert set(document) >= {"info", "licenses", "images", "annotations", "categories"}
    assert [c["id"] for c in document["categories"]] == [1, 44]


def test_recipe_errors_name_the_fix(tmp_path: Path, coco_tiny: Path) -> None:
    with pytest.raises(DatasetError, match="valid names are.*toothbrush"):
        build_coco_subset(tmp_path / "x", SubsetRecipe(split="train2017", images=2, categories=["unicorn"]),
                          coco_root=coco_tiny, progress=False)
    with pytest.raises(DatasetError, match="only 1 images"):
        build_coco_subset(tmp_path / "x", SubsetRecipe(split="train2017", images=3, categories=["cow"]),
                          coco_root=coco_tiny, progress=False)
    with pytest.raises(DatasetError, match="only 16 images"):
        select_subset(json.loads((coco_tiny / MEMBER).read_text()), SubsetRecipe(split="train2017", images=17))
    with pytest.raises(DatasetError):
        SubsetRecipe(split="test2017", images=5)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_sha_mismatch_deletes_the_download(server, tmp_path: Path) -> None:
    url = server.base + "/train2017/000000060623.jpg"
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
