"""The coco profile end to end, offline: an "official" source served on 127.0.0.1 (the annotation zip and the
images), the subset build, torchvision's weight file as a locally saved state dict in the weights cache (random
values: torch hub checks a downloaded file against the hash in its name, so a stand-in cannot be served as a
download), the detector loaded through torchvision's ``weights=`` path, one technique of each kind the kit
applies to torchvision's COCO detectors, and COCOeval with crowd regions. Assertions are on mechanics (shapes,
label <-> category-id mapping, record fields); the random weights make accuracy meaningless."""

from __future__ import annotations

import copy
import functools
import io
import json
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fake_coco import make_fake_coco
from offline_coco import write_cached_weights, write_recipes

from compresskit import prune
from compresskit.data import profile_split
from compresskit.data.coco_subset import build_coco_subset, default_subset_dir, profile_recipe
from compresskit.engine import evaluate, make_loader, predict
from compresskit.harness import Study
from compresskit.models import load_coco_pretrained
from compresskit.quantize.ort import OrtQuantConfig, quantize_core_onnx
from compresskit.runtimes import OnnxCore

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test log to the test's own lines
        pass


@pytest.fixture
def official_site(tmp_path):
    """127.0.0.1 serving /annotations/annotations_trainval2017.zip, /train2017 and /val2017."""
    site = make_fake_coco(tmp_path / "site", images=16)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for split in ("train2017", "val2017"):
            bundle.write(site / "annotations" / f"instances_{split}.json", f"annotations/instances_{split}.json")
    (site / "annotations" / "annotations_trainval2017.zip").write_bytes(archive.getvalue())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _no_network(url, *args, **kwargs):
    raise AssertionError(f"the coco path tried to download {url} although the file is cached")


@pytest.mark.slow
def test_coco_path_from_download_to_compressed_records(official_site, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "coco")
    monkeypatch.setenv("COMPRESSKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("COMPRESSKIT_COCO_RECIPES", str(write_recipes(tmp_path / "recipes", 8, 4)))
    monkeypatch.delenv("COMPRESSKIT_COCO_ROOT", raising=False)
    monkeypatch.delenv("COMPRESSKIT_COCO_IMAGE_SIZE", raising=False)

    # 1. The subsets, downloaded from the local "official" site into where the profile looks for them.
    for split in ("val2017", "train2017"):
        recipe = profile_recipe(split)
        build_coco_subset(default_subset_dir(recipe), recipe, progress=False, images_base_url=official_site.base,
                          annotations_url=f"{official_site.base}/annotations/annotations_trainval2017.zip")
    val = profile_split("val")  # built: the profile reads it without any network
    document = val.coco.dataset
    assert len(val) == 4 and any(annotation["iscrowd"] for annotation in document["annotations"])

    # 2. torchvision's weights= path, the weights taken from the cache with no network.
    cached = write_cached_weights(tmp_path / "weights", presets=("student",))[0]
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    detector, label_map = load_coco_pretrained("student")
    name, tensor = next(iter(torch.load(cached, weights_only=True).items()))
    assert torch.equal(detector.state_dict()[name], tensor)
    assert label_map.num_classes == 91 and label_map.to_category_id(90) == 90 and 12 not in label_map.category_ids

    # 3. Evaluation by COCOeval, with the subset's crowd regions, in COCO's own category ids.
    val = profile_split("val", label_map=label_map)
    loader = make_loader(val, batch_size=2, train=False)
    detections = predict(detector, loader, label_map, progress=False)
    assert {d["category_id"] for d in detections} <= set(label_map.category_ids)
    metrics = evaluate(detector, loader, label_map, progress=False)
    assert all(value is None or 0.0 <= value <= 1.0 for value in metrics.values())

    # 4. One technique of each kind, each measured into a record of the coco profile.
    study = Study(lesson="coco-end-to-end", model="student", profile="coco", val_loader=loader,
                  label_map=label_map, runs=2, artifacts=tmp_path / "artifacts")
    base = study.measure(detector, "coco/student/eager", technique="baseline")
    sparse = prune.make_permanent_(prune.prune_unstructured_(copy.deepcopy(detector),
                                                             prune.UnstructuredConfig(amount=0.5)))
    unstructured = study.measure(sparse, "coco/student/unstructured-50", technique="unstructured_pruning")
    narrow = prune.prune_structured_(copy.deepcopy(detector), prune.StructuredConfig(ratio=0.25))
    structured = study.measure(narrow, "coco/student/structured-25", technique="structured_pruning")
    calibration = profile_split("train", label_map=label_map, train_transforms=False)
    quantized = quantize_core_onnx(detector, calibration, OrtQuantConfig(calibration_images=2, fixed_shape=False),
                                   tmp_path / "artifacts" / "student-int8.onnx")
    int8 = study.measure(detector, "coco/student/ort-int8", technique="static_ptq", runtime="onnxruntime",
                         core=OnnxCore(quantized.int8_path, threads=1))
    assert unstructured["nonzero_params"] < base["nonzero_params"] <= base["params"] == unstructured["params"]
    assert structured["params"] < base["params"] and structured["macs"] < base["macs"]
    assert int8["size_bytes"] < base["size_bytes"] / 2
    for record in study.records:
        assert record["profile"] == "coco" and record["baseline"] in (None, base["id"])
        assert record["map"] is None or 0.0 <= record["map"] <= 1.0
        assert record["latency_ms"]["runs"] >= 2
    json.dumps(study.records)  # JSON-able, as the results file needs
