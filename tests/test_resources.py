"""A run that would not fit says so first, with the numbers: a COCO subset build or a download that the disk
cannot hold refuses before writing, and a training batch that does not fit in memory stops with one message that
names the batch size and a smaller one."""

from __future__ import annotations

import shutil
import threading
import zipfile
from collections import namedtuple
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from compresskit.data import load_split
from compresskit.data.coco_subset import SubsetRecipe, build_coco_subset
from compresskit.data.download import download, extract_zip_member, require_free_space
from compresskit.engine import TrainConfig, fit
from compresskit.errors import ConfigError, DownloadError
from compresskit.models import build_detector

from test_engine import TINY_SPEC

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def free_bytes(monkeypatch):
    """Make every disk report ``free_bytes.value`` bytes free."""
    class Free:
        value = 100_000_000
    measured = []

    def disk_usage(path):
        measured.append(Path(path))
        return Usage(10**12, 10**12 - Free.value, Free.value)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    Free.measured = measured
    return Free


def test_require_free_space_names_what_where_and_how_much(free_bytes, tmp_path):
    folder = tmp_path / "not" / "yet"
    with pytest.raises(DownloadError, match=rf"the zip needs 0\.47 GB at {folder}, 0\.10 GB free"):
        require_free_space(folder, 470_000_000, "the zip")
    assert free_bytes.measured == [tmp_path]  # the nearest folder that exists: the disk it will be on
    require_free_space(folder, 100_000_000, "the zip")  # exactly what is free fits


def test_coco_subset_build_refuses_before_downloading_anything(free_bytes, tmp_path):
    out = tmp_path / "coco-train2017-5000"
    # No server listens on port 9: the refusal has to come before the first request.
    with pytest.raises(DownloadError, match=r"the COCO subset coco-train2017-5000 \(5000 images, estimated\) "
                                            r"needs 1\.29 GB at .*, 0\.10 GB free"):
        build_coco_subset(out, SubsetRecipe("train2017", 5000), annotations_url="http://127.0.0.1:9/a.zip",
                          cache_dir=tmp_path / "cache", progress=False)
    assert list(tmp_path.iterdir()) == []  # no work folder, no cache, no partial file


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "big.bin").write_bytes(b"x" * 300_000)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_the_announced_size_before_writing(free_bytes, file_server, tmp_path):
    free_bytes.value = 200_000
    dest = tmp_path / "downloads" / "big.bin"
    with pytest.raises(DownloadError, match=rf"needs 0\.00 GB at {dest.parent}, 0\.00 GB free"):
        download(f"{file_server}/big.bin", dest, progress=False, retries=0)
    assert not dest.exists() and not dest.with_name("big.bin.part").exists()
    free_bytes.value = 10**9
    assert download(f"{file_server}/big.bin", dest, progress=False).stat().st_size == 300_000


def test_extracting_a_member_checks_its_uncompressed_size(free_bytes, tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("annotations/instances_val2017.json", "0" * 2_000_000)  # compresses to a few KB
    free_bytes.value = 1_000_000
    with pytest.raises(DownloadError, match=r"extracting annotations/instances_val2017\.json needs 0\.00 GB"):
        extract_zip_member(archive, "annotations/instances_val2017.json", tmp_path / "out" / "val.json")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate "
                                                                         "2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 8589934592 bytes.")],
                         ids=["MemoryError", "cuda", "cpu-allocator"])
def test_a_batch_that_does_not_fit_in_memory_is_one_message_naming_the_batch_size(error, tiny_embedded, tmp_path,
                                                                                   monkeypatch):
    model = build_detector(TINY_SPEC)

    def out_of_memory(*args, **kwargs):
        raise error
    monkeypatch.setattr(model, "forward", out_of_memory)
    config = TrainConfig(epochs=1, batch_size=8, warmup_iters=1, workers=0)
    with pytest.raises(ConfigError, match=r"^batch size 8 does not fit in cpu memory \(.+\); train with a "
                                          r"smaller TrainConfig\.batch_size, e.g\. 4$"):
        fit(model, load_split("train", tiny_embedded), None, config, tmp_path, max_iters_per_epoch=1,
            progress=False, log=lambda message: None)


def test_other_runtime_errors_are_not_taken_for_memory(tiny_embedded, tmp_path, monkeypatch):
    model = build_detector(TINY_SPEC)

    def broken(*args, **kwargs):
        raise RuntimeError("shapes do not match")
    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        fit(model, load_split("train", tiny_embedded), None, TrainConfig(epochs=1, batch_size=2, workers=0),
            tmp_path, max_iters_per_epoch=1, progress=False, log=lambda message: None)
