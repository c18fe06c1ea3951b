"""Evaluation against hand-computed COCO numbers, the training loop, resume, and DDP under torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from torch import nn

from compresskit.data import load_split
from compresskit.data.dataset import load_coco
from compresskit.engine import (VAL_SUBSET_IMAGES, ExtraTraining, TrainConfig, coco_metrics, console_command,
                                evaluate, fit, load_splits, make_loader, predict, ship_checkpoint, train_and_ship,
                                train_preset)
from compresskit.errors import CheckpointError
from compresskit.measure import environment_stamp
from compresskit.models import EMBEDDED_PRESETS, build_detector, load_checkpoint

TINY_SPEC = replace(EMBEDDED_PRESETS["student"], widths=[8, 8, 16, 16, 32], fpn_channels=32, head_convs=1)


def tiny_adapter() -> nn.Module:
    """A stand-in for a distillation adapter: trained only through the extra loss below."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def adapter_loss(adapter: nn.Module, modes: list | None = None):
    def extra_loss(model, images, targets):
        if modes is not None:
            modes.append(adapter.training)
        colours = torch.stack([image.mean(dim=(1, 2)) for image in images])  # (N, 3), no grad of its own
        return {"adapter": (adapter(colours) - 1.0).pow(2).mean()}
    return extra_loss


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
    assert (tmp_path / "last.pt").exists()
    # The metrics are the last epoch's evaluation of the trained weights; a run without a val loader has none.
    assert result["metrics"] == result["history"][-1]["metrics"] == evaluate(model, val_loader, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # Resume: a second run with 2 epochs continues after epoch 1 instead of starting again.
    resumed = fit(build_detector(TINY_SPEC), train_set, None, replace(config, epochs=2), tmp_path,
                  max_iters_per_epoch=3, progress=False, log=lambda message: None)
    assert [entry["epoch"] for entry in resumed["history"]] == [1, 2] and resumed["metrics"] is None


def test_fit_trains_extra_modules_saves_them_and_resume_restores_them(tiny_embedded, tmp_path):
    train_set = load_split("train", tiny_embedded)
    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=2, workers=0)
    adapter, modes = tiny_adapter().eval(), []
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    fit(build_detector(TINY_SPEC), train_set, None, config, tmp_path, extra_loss=adapter_loss(adapter, modes),
        extra_modules=adapter, max_iters_per_epoch=3, progress=False, log=lambda message: None)
    assert modes == [True, True, True]  # switched to train mode with the detector
    trained = adapter.state_dict()
    assert all(not torch.equal(before[k], trained[k]) for k in before)  # every tensor moved, biases included
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["extra_modules"].keys() == trained.keys()
    assert all(torch.equal(saved["extra_modules"][k], trained[k]) for k in trained)
    # Resuming the finished run restores the adapter without training it further.
    restored = tiny_adapter()
    assert not torch.equal(restored.state_dict()["0.weight"], trained["0.weight"])
    fit(build_detector(TINY_SPEC), train_set, None, config, tmp_path, extra_loss=adapter_loss(restored),
        extra_modules=restored, max_iters_per_epoch=3, progress=False, log=lambda message: None)
    assert all(torch.equal(restored.state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(CheckpointError, match="with extra modules"):
        fit(build_detector(TINY_SPEC), train_set, None, config, tmp_path, max_iters_per_epoch=3, progress=False,
            log=lambda message: None)


def test_ship_checkpoint_records_the_metrics_of_the_reloaded_weights(tiny_embedded, tmp_path):
    val_set = load_split("val", tiny_embedded)
    spec = replace(TINY_SPEC, score_thresh=0.0)  # an untrained detector: keep its boxes so mAP is computed on some
    torch.manual_seed(0)
    model = build_detector(spec)
    path = ship_checkpoint(tmp_path / "tiny.pt", model, spec, val_set.label_map, {"preset": "tiny"}, val_set,
                           progress=False)
    loaded, label_map, meta = load_checkpoint(path)
    assert json.loads(path.with_suffix(".json").read_text()) == meta
    assert meta["preset"] == "tiny" and meta["command"] is None
    assert torch.__version__.startswith(meta["environment"]["torch"])
    assert meta["environment"]["isa"] == environment_stamp()["isa"]  # the CPU it was measured on
    assert meta["input_size"] == {"min_size": [spec.image_size], "max_size": spec.image_size, "fixed_size": None}
    loader = make_loader(val_set, batch_size=8, train=False)
    assert len(predict(loaded, loader, label_map, progress=False)) > 0
    assert meta["val_metrics"] == evaluate(loaded, loader, label_map, progress=False)
    assert meta["val_subset"]["images"] == VAL_SUBSET_IMAGES and set(meta["val_subset"]["metrics"]) == set(
        meta["val_metrics"])
    weight = "head.classification_head.cls_logits.weight"
    assert torch.equal(loaded.state_dict()[weight], model.state_dict()[weight].half().float())  # fp16 as shipped


def test_console_command_is_recorded_only_for_the_console_script(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/opt/env/bin/compresskit", "train", "--out", "my runs"])
    assert console_command() == "compresskit train --out 'my runs'"
    monkeypatch.setattr("sys.argv", ["/opt/env/bin/pytest", "tests"])
    assert console_command() is None


def test_train_preset_ships_a_loadable_checkpoint(tiny_embedded, tmp_path):
    config = TrainConfig(epochs=1, batch_size=2, warmup_iters=1, workers=0)
    path = train_preset("student", tmp_path, data_dir=tiny_embedded, config=config, max_iters_per_epoch=1,
                        progress=False)
    model, _, meta = load_checkpoint(path)
    assert path == tmp_path / "student.pt" and (tmp_path / "student.json").exists()
    assert meta["preset"] == "student" and meta["train_config"]["epochs"] == 1 and len(meta["history"]) == 1
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in build_detector(EMBEDDED_PRESETS["student"]).parameters())


def test_train_and_ship_runs_the_extra_training_and_records_the_run(tiny_embedded, tmp_path, monkeypatch):
    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0)
    splits = load_splits(tiny_embedded)
    model, adapter, events = build_detector(TINY_SPEC), tiny_adapter(), []

    @contextlib.contextmanager
    def attach(detector):
        events.append(("attached", detector is model))
        yield
        events.append(("detached", None))

    def extra(detector):  # built for the detector about to train, as a pruned student's distiller is
        return ExtraTraining(loss=adapter_loss(adapter), modules=adapter, attach=attach,
                             record=lambda: {"extra_steps": 2})

    from compresskit.engine import shipping

    run_at_shipping = {}
    ship = shipping.ship_checkpoint

    def ship_and_look(*args, **kwargs):  # what the run folder holds when the checkpoint ships
        run_at_shipping.update(torch.load(tmp_path / "tiny-run" / "last.pt", weights_only=True))
        return ship(*args, **kwargs)

    monkeypatch.setattr(shipping, "ship_checkpoint", ship_and_look)
    path = train_and_ship(model, TINY_SPEC, splits, config, tmp_path / "tiny.pt", meta={"preset": "tiny"},
                          extra_training=extra, measure_start=True, trained_meta=lambda trained: {"on": str(
                              next(trained.parameters()).device)}, max_iters_per_epoch=2, progress=False)
    assert path == tmp_path / "tiny.pt" and events == [("attached", True), ("detached", None)]
    assert run_at_shipping["extra_modules"].keys() == adapter.state_dict().keys()  # the default run folder
    assert not (tmp_path / "tiny-run").exists()  # shipped: nothing left to resume
    _, label_map, meta = load_checkpoint(path)
    assert json.loads(path.with_suffix(".json").read_text()) == meta and label_map == splits.label_map
    assert list(meta)[1:11] == ["preset", "map_before_finetune", "train_config", "train_seconds",
                                "wall_seconds_incl_eval", "history", "resumed_after_epochs", "seed", "extra_steps",
                                "on"]
    assert meta["resumed_after_epochs"] == []
    assert meta["on"] == "cpu" and meta["train_config"] == asdict(config) and meta["seed"] == config.seed
    assert "adapter" in meta["history"][0]["losses"] and set(meta["val_metrics"]) == set(meta["map_before_finetune"])


DDP_SCRIPT = """
import os, runpy
runpy.run_path(os.environ["COMPRESSKIT_TEST_WARNING_POLICY"])  # the suite's deprecation policy (conftest.py)
import sys, torch, torch.distributed as dist
from compresskit.data import load_split
from compresskit.engine import TrainConfig, fit
from compresskit.models import build_detector
sys.path.insert(0, {tests!r})
from test_engine import TINY_SPEC, adapter_loss, tiny_adapter
model, adapter = build_detector(TINY_SPEC), tiny_adapter()
fit(model, load_split("train", {data!r}), None, TrainConfig(epochs=1, batch_size=2, warmup_iters=1, workers=0),
    {out!r}, extra_loss=adapter_loss(adapter), extra_modules=adapter, max_iters_per_epoch=3, progress=False,
    log=lambda m: None)
torch.save({{"model": model.state_dict(), "adapter": adapter.state_dict()}}, {out!r} + f"/rank{{dist.get_rank()}}.pt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
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
    initial = {"model": build_detector(TINY_SPEC).state_dict(), "adapter": tiny_adapter().state_dict()}
    for part in ("model", "adapter"):  # same seed, so the same start on both ranks
        assert any(not torch.equal(initial[part][k], rank0[part][k]) for k in rank0[part]), f"{part} not trained"
        for name in rank0[part]:
            assert torch.equal(rank0[part][name], rank1[part][name]), (part, name)
