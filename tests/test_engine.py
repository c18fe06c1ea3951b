"""Evaluation against hand-computed COCO numbers, the training loop, resume, and DDP under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from compresskit.data import load_split
from compresskit.data.dataset import load_coco
from compresskit.engine import TrainConfig, coco_metrics, evaluate, fit, make_loader
from compresskit.models import EMBEDDED_PRESETS, build_detector

TINY_SPEC = replace(EMBEDDED_PRESETS["student"], widths=[8, 8, 16, 16, 32], fpn_channels=32, head_convs=1)


def _ground_truth(tmp_path: Path, boxes: list[list[float]]):
    document = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
                "annotations": [{"id": i + 1, "image_id": 1, "category_id": 7, "bbox": box,
                                 "area": box[2] * box[3], "iscrowd": 0} for i, box in enumerate(boxes)],
                "categories": [{"id": 7, "name": "thing"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(document))
    return load_coco(path)


def test_perfect_predictions_score_one(tmp_path):
    boxes = [[10, 10, 20, 20], [50, 50, 40, 30]]
    gt = _ground_truth(tmp_path, boxes)
    detections = [{"image_id": 1, "category_id": 7, "bbox": b, "score": 0.9} for b in boxes]
    metrics = coco_metrics(gt, detections, [1])
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0)
    assert metrics["map_small"] == pytest.approx(1.0)  # 20x20 = 400 px is small
    assert metrics["map_large"] is None  # no large ground truth: nothing to measure, not a zero


def test_no_predictions_score_zero_not_minus_one(tmp_path):
    metrics = coco_metrics(_ground_truth(tmp_path, [[10, 10, 20, 20]]), [], [1])
    assert all(value == 0.0 for value in metrics.values())


def test_one_box_at_iou_08_by_hand(tmp_path):
    # GT 10x10 at the origin, prediction 10x8 inside it: IoU = 80/100 = 0.8. Of the ten IoU thresholds
    # 0.50, 0.55, ..., 0.95 the match holds for the seven up to 0.80, so mAP = 7/10, AP50 = AP75 = 1.
    gt = _ground_truth(tmp_path, [[0, 0, 10, 10]])
    metrics = coco_metrics(gt, [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 8], "score": 0.5}], [1])
    assert metrics["map"] == pytest.approx(0.7) and metrics["map50"] == pytest.approx(1.0)
    assert metrics["map75"] == pytest.approx(1.0)


def test_half_recall_by_hand(tmp_path):
    # Two GT boxes, one exact prediction: precision 1 up to recall 0.5, then nothing. COCO samples precision
    # at 101 recall points 0, 0.01, ..., 1; the 51 points <= 0.5 score 1, so AP = 51/101 at every threshold.
    gt = _ground_truth(tmp_path, [[0, 0, 10, 10], [50, 50, 10, 10]])
    metrics = coco_metrics(gt, [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "score": 0.9}], [1])
    assert metrics["map"] == pytest.approx(51 / 101)


def test_evaluate_maps_labels_back_to_category_ids(tiny_embedded):
    class Oracle(torch.nn.Module):  # returns the ground truth as detections, in training labels
        def __init__(self, dataset):
            super().__init__()
            self.targets = [dataset.load_target(i, 320, 320) for i in dataset.ids]
            self.calls = 0

        def forward(self, images):
            out = []
            for _ in images:
                t = self.targets[self.calls]
                self.calls += 1
                out.append({"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"],
                            "scores": torch.ones(len(t["labels"]))})
            return out

    dataset = load_split("val", tiny_embedded, train_transforms=False)
    metrics = evaluate(Oracle(dataset), make_loader(dataset, batch_size=3, train=False), progress=False)
    assert metrics["map"] == pytest.approx(1.0)


def test_fit_trains_checkpoints_and_resumes(tiny_embedded, tmp_path):
    train_set = load_split("train", tiny_embedded)
    val_loader = make_loader(load_split("val", tiny_embedded), batch_size=4, train=False)
    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=2, workers=0)
    model = build_detector(TINY_SPEC)
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(model, train_set, val_loader, config, tmp_path, max_iters_per_epoch=3, progress=False)
    assert (tmp_path / "last.pt").exists() and result["metrics"] is not None
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # Resume: a second run with 2 epochs continues after epoch 1 instead of starting again.
    resumed = fit(build_detector(TINY_SPEC), train_set, None, replace(config, epochs=2), tmp_path,
                  max_iters_per_epoch=3, progress=False, log=lambda message: None)
    assert [entry["epoch"] for entry in resumed["history"]] == [1, 2]


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from compresskit.data import load_split
from compresskit.engine import TrainConfig, fit
from compresskit.models import build_detector
sys.path.insert(0, {tests!r})
from test_engine import TINY_SPEC
model = build_detector(TINY_SPEC)
fit(model, load_split("train", {data!r}), None, TrainConfig(epochs=1, batch_size=2, warmup_iters=1, workers=0),
    {out!r}, max_iters_per_epoch=3, progress=False, log=lambda m: None)
torch.save(model.state_dict(), {out!r} + f"/rank{{dist.get_rank()}}.pt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_processes_end_with_identical_weights(tiny_embedded, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=str(tiny_embedded),
                                        out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(script)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    initial = build_detector(TINY_SPEC).state_dict()  # same seed, so the same start on both ranks
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0), "DDP run did not train"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
