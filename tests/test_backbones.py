"""Lightweight backbones: every entry builds, trains a step, evaluates and exports; specs, weights and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models import get_model
from torchvision.ops import FrozenBatchNorm2d

from compresskit import backbones
from compresskit.backbones import (BACKBONES, article_pretrained_call, backbone_spec, backbone_table,
                                   build_detector_with_backbone, tapped_nodes, train_backbone, weights_api_steps)
from compresskit.data import collate_fn, load_split
from compresskit.engine import TrainConfig, evaluate, make_loader, val_subset
from compresskit.errors import CompressKitError, ConfigError, DownloadError
from compresskit.measure import count_macs
from compresskit.models import EMBEDDED_PRESETS, build_detector, load_checkpoint
from compresskit.models.core import ExportableCore, example_batch, export_core_onnx
from compresskit.models.trunks import classification_model, feature_nodes
from compresskit.runtimes import OnnxCore

TEACHER = EMBEDDED_PRESETS["teacher"]


@pytest.fixture(scope="module")
def tiny_batch(tiny_embedded):
    """Two training images of 320 px with their targets, and a loader over two val images."""
    train_set = load_split("train", tiny_embedded)
    images, targets = collate_fn([train_set[0], train_set[1]])
    val_loader = make_loader(val_subset(load_split("val", tiny_embedded), images=2), batch_size=2, train=False)
    return list(images), list(targets), val_loader, train_set.label_map.num_classes


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_trains_a_step_evaluates_and_exports_to_onnx(name, tiny_batch, tmp_path):
    images, targets, val_loader, num_classes = tiny_batch
    torch.manual_seed(0)
    detector = build_detector_with_backbone(name, num_classes=num_classes)
    losses = detector.train()(images, targets)
    sum(losses.values()).backward()
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(math.isfinite(float(value.detach())) for value in losses.values())
    trunk_grads = [p.grad for p in detector.backbone.body.parameters() if p.grad is not None]
    assert trunk_grads and any(float(grad.abs().sum()) > 0 for grad in trunk_grads)  # the trunk learns

    detector.eval().score_thresh = 0.0  # random weights score low; keep boxes so COCOeval has work to do
    metrics = evaluate(detector, val_loader, progress=False)
    assert 0.0 <= metrics["map"] <= 1.0 and 0.0 <= metrics["map50"] <= 1.0

    core, batch = ExportableCore(detector), example_batch(TEACHER.image_size)
    path = export_core_onnx(core, tmp_path / f"{name}.onnx", batch)
    with torch.inference_mode():
        expected = core(batch)
    exported = OnnxCore(path)(batch)
    assert len(exported) == len(expected) == 3
    for onnx_output, torch_output in zip(exported, expected):
        scale = float(torch_output.abs().max())
        torch.testing.assert_close(onnx_output, torch_output, rtol=1e-3, atol=1e-3 * max(scale, 1.0))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_fpn_reads_the_strides_and_channels_a_dry_run_finds(name):
    choice, spec = BACKBONES[name], backbone_spec(name)
    detector = build_detector(spec).eval()
    taps = tapped_nodes(detector)
    if choice.model == "resnet_basic":
        assert [width for _, width in taps.values()] == TEACHER.widths[2:]
    else:
        assert taps == feature_nodes(classification_model(choice.model, choice.kwargs))
    with torch.inference_mode():
        levels = list(detector.backbone.body(torch.zeros(1, 3, 320, 320)).values())
    assert [tuple(level.shape[-2:]) for level in levels] == [(40, 40), (20, 20), (10, 10)]
    assert [level.shape[1] for level in levels] == [width for _, width in taps.values()]
    # only the trunk differs from the teacher: same FPN width, head depth and input size
    assert (spec.fpn_channels, spec.head_convs, spec.image_size) == (TEACHER.fpn_channels, TEACHER.head_convs,
                                                                     TEACHER.image_size)
    assert spec.frozen_bn is False  # trained from scratch, the BatchNorms learn their statistics


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "resnet_basic"])
def test_width_mult_narrows_the_trunk(name):
    full = tapped_nodes(build_detector(backbone_spec(name)))
    narrow = tapped_nodes(build_detector(backbone_spec(name, width_mult=0.5)))
    assert narrow[8][1] < full[8][1] and narrow[16][1] < full[16][1], (full, narrow)
    assert narrow[32][1] <= full[32][1]  # MobileNetV2 keeps its 1280-wide last conv for width_mult < 1


def test_width_mult_on_a_backbone_without_one_names_those_that_take_it():
    with pytest.raises(ConfigError, match="'efficientnet_b0' takes no width_mult.*mobilenet_v2"):
        backbone_spec("efficientnet_b0", width_mult=0.5)
    with pytest.raises(ConfigError, match="positive"):
        backbone_spec("mobilenet_v2", width_mult=0)


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        build_detector_with_backbone("mobilenet_v4")
    assert "'mobilenet_v4'" in str(error.value)
    assert all(name in str(error.value) for name in BACKBONES)
    with pytest.raises(ConfigError, match="weights must be"):
        build_detector_with_backbone("mobilenet_v2", weights="coco")


class _ShallowTrunk(nn.Module):
    """Downsamples to stride 8 only: no stride-16 or stride-32 feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.stem(images)))


def test_a_trunk_without_the_needed_strides_names_the_strides_it_has():
    with pytest.raises(CompressKitError, match=r"stride \[16, 32\].*found strides \[4, 8\]"):
        feature_nodes(_ShallowTrunk())


def test_article_pretrained_call_reports_what_torchvision_does_without_downloading():
    hub_before = torch.hub.get_dir()
    text = article_pretrained_call()
    assert torch.hub.get_dir() == hub_before
    assert "'pretrained' is deprecated" in text
    assert "IMAGENET1K_V1" in text and "mobilenet_v2-b0353104.pth" in text  # the legacy mapping, not DEFAULT
    assert "placeholder" in text  # stopped before any download


def test_weights_api_steps_read_the_enum_without_downloading():
    steps = weights_api_steps("mobilenet_v2")
    assert steps["enum"] == "MobileNet_V2_Weights" and steps["default"] == "IMAGENET1K_V2"
    assert steps["default"] in steps["members"] and "IMAGENET1K_V1" in steps["members"]
    assert steps["num_params"] == sum(p.numel() for p in get_model("mobilenet_v2").parameters())
    assert 60 < steps["acc@1"] < 90
    assert "mean=[0.485, 0.456, 0.406]" in steps["transforms"]
    with pytest.raises(ConfigError, match="no torchvision weights"):
        weights_api_steps("resnet_basic")


def test_imagenet_weights_come_from_the_cache_only_and_freeze_batch_norm(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path))
    with pytest.raises(DownloadError, match=r"not cached at .*mobilenet_v3_small-"):
        build_detector_with_backbone("mobilenet_v3_small", weights="imagenet")
    # A stand-in for the cached ImageNet file: a classification model's own state_dict under torchvision's name.
    torch.manual_seed(1)
    imagenet = get_model("mobilenet_v3_small")
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet.state_dict(), tmp_path / "checkpoints" / weights_api_steps("mobilenet_v3_small")["url"]
               .rsplit("/", 1)[-1])
    detector = build_detector_with_backbone("mobilenet_v3_small", weights="imagenet")
    body = detector.backbone.body.state_dict()
    assert all(torch.equal(tensor, imagenet.state_dict()[key]) for key, tensor in body.items())
    norms = {type(m) for m in detector.backbone.body.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))}
    assert norms == {FrozenBatchNorm2d}
    assert backbone_spec("shufflenet_v2_x1_0", weights="imagenet").frozen_bn is False  # takes no norm_layer
    with pytest.raises(ConfigError, match="width_mult"):
        build_detector_with_backbone("mobilenet_v3_small", width_mult=0.5, weights="imagenet")
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_detector_with_backbone("resnet_basic", weights="imagenet")


def test_backbone_table_counts_depthwise_convs_and_macs():
    rows = {row["name"]: row for row in backbone_table(["resnet_basic", "mobilenet_v3_small"])}
    assert set(rows) == {"resnet_basic", "mobilenet_v3_small"}
    assert rows["resnet_basic"]["depthwise_convs"] == 0 and rows["resnet_basic"]["depthwise_macs_share"] == 0
    mobile = rows["mobilenet_v3_small"]
    detector = build_detector_with_backbone("mobilenet_v3_small").eval()
    depthwise = [m for m in detector.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert mobile["depthwise_convs"] == len(depthwise) > 0
    assert 0 < mobile["depthwise_macs_share"] < 1
    assert mobile["macs"] == count_macs(ExportableCore(detector), example_batch(320))
    assert mobile["trunk_macs"] < mobile["macs"] and mobile["trunk_macs"] < rows["resnet_basic"]["trunk_macs"]
    assert mobile["nodes"] == {stride: list(tap) for stride, tap in tapped_nodes(detector).items()}

    from compresskit.report import plot_macs_split

    bars = plot_macs_split(list(rows.values())).axes[0].patches  # trunk bars, then FPN-and-head bars
    assert [bar.get_width() for bar in bars[:2]] == pytest.approx([r["trunk_macs"] / 1e9 for r in rows.values()])
    assert [bar.get_width() for bar in bars[2:]] == pytest.approx(
        [(r["macs"] - r["trunk_macs"]) / 1e9 for r in rows.values()])


def test_train_backbone_ships_a_loadable_checkpoint_naming_its_backbone(tiny_embedded, tmp_path):
    config = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_iters=2, workers=0)
    path = train_backbone("mobilenet_v3_small", tmp_path, config=config, data_dir=tiny_embedded,
                          max_iters_per_epoch=2, progress=False)
    assert path == tmp_path / "backbone_mobilenet_v3_small.pt"
    detector, label_map, meta = load_checkpoint(path)
    assert meta["backbone"] == "mobilenet_v3_small" and meta["width_mult"] is None
    assert meta["train_config"]["epochs"] == 1 and len(meta["history"]) == 1 and meta["trained_on"]
    assert set(meta["val_metrics"]) >= {"map", "map50"}
    assert tapped_nodes(detector) == tapped_nodes(build_detector_with_backbone("mobilenet_v3_small"))
    assert not (tmp_path / "backbone_mobilenet_v3_small-run").exists()  # shipped: nothing left to resume
    assert backbones.TRAIN_RECIPE_BACKBONE.epochs == 8
