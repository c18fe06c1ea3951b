"""Presets and trunks, the one checkpoint format, the core split and its exports, and the shipped detectors."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from compresskit.data import load_split
from compresskit.data.dataset import LabelMap
from compresskit.data.embedded import CATEGORIES
from compresskit.engine import VAL_SUBSET_IMAGES, evaluate, make_loader, val_subset
from compresskit.errors import CheckpointError, CompressKitError
from compresskit.measure import count_macs
from compresskit.models import (EMBEDDED_PRESETS, DetectorSpec, build_coco_architecture, build_detector,
                                checkpoint_spec, load_checkpoint, load_preset, save_checkpoint, shipped_checkpoint)
from compresskit.models.core import (EndToEndDetector, ExportableCore, example_batch, export_core_onnx,
                                     export_core_program)
from compresskit.runtimes import OnnxCore

SHIPPED = ("teacher", "student", "teacher_pruned")
SMALL_IMAGE = 128  # test specs run at this size: every stride-32 map is still 4x4
LABEL_MAP = LabelMap.contiguous(CATEGORIES)


def _shipped_payload(name: str) -> dict:
    path = shipped_checkpoint(name)
    assert path.exists(), f"the committed checkpoint {path} is missing from this checkout"
    return torch.load(path, map_location="cpu", weights_only=True)


def _fpn_inputs(detector: nn.Module) -> list[int]:
    return [block[0].in_channels for block in detector.backbone.fpn.inner_blocks]


def _assert_same_core_outputs(first: nn.Module, second: nn.Module, size: int = SMALL_IMAGE) -> None:
    batch = example_batch(size)
    with torch.inference_mode():
        for expected, actual in zip(ExportableCore(first)(batch), ExportableCore(second)(batch), strict=True):
            assert expected.numel() > 0 and torch.equal(expected, actual)


# --------------------------------------------------------------------------------------------- presets
def test_student_has_at_most_a_quarter_of_the_teachers_macs():
    macs = {name: count_macs(ExportableCore(build_detector(spec).eval()), example_batch())
            for name, spec in EMBEDDED_PRESETS.items()}
    assert macs["student"] <= macs["teacher"] / 4, macs


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_default_presets_build_exactly_as_the_shipped_checkpoints(name):
    payload = _shipped_payload(name)
    assert "backbone" not in payload["spec"]  # written before the field existed: must build the kit's trunk
    detector = build_detector(EMBEDDED_PRESETS[name])
    assert EMBEDDED_PRESETS[name].backbone == "resnet_basic"
    detector.load_state_dict({k: v.float() if v.is_floating_point() else v
                              for k, v in payload["state_dict"].items()}, strict=True)
    stored_params = sum(payload["state_dict"][name].numel() for name, _ in detector.named_parameters())
    assert sum(p.numel() for p in detector.parameters()) == stored_params


def test_spec_round_trips_through_json_and_old_specs_get_the_defaults():
    spec = DetectorSpec(backbone="mobilenet_v3_large", backbone_kwargs={"width_mult": 0.75}, frozen_bn=True)
    assert DetectorSpec.from_json(json.loads(json.dumps(asdict(spec)))) == spec
    old = {k: v for k, v in asdict(EMBEDDED_PRESETS["student"]).items()
           if k not in ("backbone", "backbone_kwargs", "frozen_bn")}
    assert DetectorSpec.from_json(old) == EMBEDDED_PRESETS["student"]
    with pytest.raises(CompressKitError, match="unknown detector spec fields"):
        DetectorSpec.from_json({**old, "trunk": "vgg"})


# --------------------------------------------------------------------------------------------- torchvision trunks
@pytest.fixture(scope="module", params=["mobilenet_v3_large", "resnet18"])
def torchvision_spec(request) -> DetectorSpec:
    return replace(EMBEDDED_PRESETS["student"], backbone=request.param, image_size=SMALL_IMAGE)


def test_torchvision_trunk_reads_strides_8_16_32(torchvision_spec):
    detector = build_detector(torchvision_spec).eval()
    assert len(detector.backbone.return_nodes) == 3
    with torch.inference_mode():
        levels = detector.backbone.body(torch.zeros(1, 3, 320, 320))
    assert [tuple(level.shape[-2:]) for level in levels.values()] == [(40, 40), (20, 20), (10, 10)]
    assert [level.shape[1] for level in levels.values()] == _fpn_inputs(detector)


def test_torchvision_trunk_trains_detects_splits_and_saves_exactly(torchvision_spec, tmp_path):
    torch.manual_seed(0)
    detector = build_detector(torchvision_spec)
    images = [torch.rand(3, SMALL_IMAGE, SMALL_IMAGE), torch.rand(3, SMALL_IMAGE, SMALL_IMAGE)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 90.0, 110.0]]), "labels": torch.tensor([4])}]
    losses = detector.train()(images, targets)
    sum(losses.values()).backward()
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(math.isfinite(float(value.detach())) for value in losses.values())
    detector.eval().score_thresh = 0.0  # keep many boxes, so the comparison is not trivially empty
    with torch.inference_mode():
        direct, split = detector(images)[0], EndToEndDetector(detector)(images)[0]
    assert len(direct["boxes"]) > 0
    torch.testing.assert_close(direct["boxes"], split["boxes"])
    torch.testing.assert_close(direct["scores"], split["scores"])
    path = save_checkpoint(tmp_path / "tv.pt", detector, torchvision_spec, LABEL_MAP)
    assert checkpoint_spec(path) == torchvision_spec
    loaded, _, _ = load_checkpoint(path)
    _assert_same_core_outputs(detector, loaded)


def test_backbone_kwargs_reach_the_torchvision_model():
    spec = replace(EMBEDDED_PRESETS["student"], backbone="mobilenet_v3_large", image_size=SMALL_IMAGE)
    narrow = replace(spec, backbone_kwargs={"width_mult": 0.5})
    widths = [_fpn_inputs(build_detector(s)) for s in (spec, narrow)]
    assert all(n < w for n, w in zip(widths[1], widths[0])), widths


def test_frozen_bn_builds_frozen_batch_norms_everywhere_in_the_trunk():
    from torchvision.ops import FrozenBatchNorm2d

    detector = build_detector(replace(EMBEDDED_PRESETS["student"], backbone="resnet18", frozen_bn=True))
    norms = [type(m) for m in detector.backbone.body.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and set(norms) == {FrozenBatchNorm2d}


@pytest.mark.parametrize("spec, message", [
    (replace(EMBEDDED_PRESETS["student"], backbone="resnet_18"), "unknown backbone"),
    (replace(EMBEDDED_PRESETS["student"], backbone="shufflenet_v2_x0_5", frozen_bn=True), "frozen_bn=False"),
    (replace(EMBEDDED_PRESETS["student"], backbone="resnet18", backbone_kwargs={"depth": 3}), "backbone_kwargs"),
    (replace(EMBEDDED_PRESETS["student"], backbone_kwargs={"width_mult": 0.5}), "widths and depths"),
])
def test_unbuildable_specs_say_what_to_change(spec, message):
    with pytest.raises(CompressKitError, match=message):
        build_detector(spec)


# --------------------------------------------------------------------------------------------- core split
def test_core_detector_reproduces_the_detector_and_exports(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    detector.score_thresh = 0.0  # keep many boxes, so the comparison is not trivially empty
    images = [torch.rand(3, 320, 320)]
    with torch.inference_mode():
        direct, split = detector(images)[0], EndToEndDetector(detector)(images)[0]
    assert len(direct["boxes"]) > 0
    torch.testing.assert_close(direct["boxes"], split["boxes"])
    torch.testing.assert_close(direct["scores"], split["scores"])
    core = ExportableCore(detector)
    onnx_path = export_core_onnx(core, tmp_path / "core.onnx")
    with torch.inference_mode():
        reference = core(example_batch())
        onnx_outputs = OnnxCore(onnx_path)(example_batch())
        via_onnx = EndToEndDetector(detector, OnnxCore(onnx_path))(images)[0]
    for expected, actual in zip(reference, onnx_outputs):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)
    assert len(via_onnx["labels"]) >= 20 and torch.equal(via_onnx["labels"][:20], direct["labels"][:20])
    program = export_core_program(core)
    torch.testing.assert_close(program.module()(example_batch())[0], reference[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_coco_architectures_split_into_a_core(name):
    torch.manual_seed(0)
    detector = build_coco_architecture(name)
    detector.score_thresh = 0.0  # random weights score below the default threshold: keep boxes to compare
    detector.transform.min_size, detector.transform.max_size = (240,), 320  # not 800 px: keeps the test quick
    images = [torch.rand(3, 240, 320)]
    with torch.inference_mode():
        direct, split = detector(images)[0], EndToEndDetector(detector)(images)[0]
    assert len(direct["scores"]) > 0
    torch.testing.assert_close(direct["scores"], split["scores"])
    torch.testing.assert_close(direct["boxes"], split["boxes"])


# --------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_safe_and_exact(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    path = save_checkpoint(tmp_path / "s.pt", detector, EMBEDDED_PRESETS["student"], LABEL_MAP, meta={"x": 1})
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"spec", "label_map", "architecture", "meta", "state_dict"}
    loaded, loaded_map, meta = load_checkpoint(path)
    assert loaded_map == LABEL_MAP and meta == {"x": 1} and not loaded.training
    _assert_same_core_outputs(detector, loaded, size=320)


def test_half_checkpoints_store_fp16_and_load_fp32(tmp_path):
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    path = save_checkpoint(tmp_path / "h.pt", detector, EMBEDDED_PRESETS["student"], LABEL_MAP, half=True)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    loaded, _, _ = load_checkpoint(path)
    weight = "backbone.body.layer1.0.conv1.weight"
    assert loaded.state_dict()[weight].dtype == torch.float32
    assert torch.equal(loaded.state_dict()[weight], detector.state_dict()[weight].half().float())


def test_unreadable_and_foreign_files_raise_checkpoint_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt is not a compresskit checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt .*missing \['spec', 'label_map', 'state_dict'\]"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """An object whose unpickling would call print: the kind of file that must never be loaded unsafely."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_refused_file_is_named_without_passing_on_unsafe_advice(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text('{"splits": {}}')
    with pytest.raises(CheckpointError, match="not a PyTorch file at all") as json_file:
        load_checkpoint(tmp_path / "manifest.json")
    torch.save({"spec": _Payload(), "label_map": None, "state_dict": {}}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors") as objects:
        load_checkpoint(tmp_path / "objects.pt")
    torch.save({"weights": torch.zeros(1000)}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="damaged or truncated") as truncated:
        load_checkpoint(tmp_path / "cut.pt")
    for refused in (json_file, objects, truncated):
        assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)
    assert "unpickled" not in capsys.readouterr().out  # the payload never ran


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_in_both_earlier_formats_load(name):
    payload = _shipped_payload(name)
    # teacher and student predate the architecture field; the pruned teacher came from the earlier pruned writer
    assert ("architecture" in payload) == (name == "teacher_pruned")
    detector, label_map, meta = load_checkpoint(shipped_checkpoint(name))
    assert label_map.num_classes == detector.head.classification_head.num_classes
    assert meta["val_subset"]["images"] == VAL_SUBSET_IMAGES
    state = detector.state_dict()
    assert all(torch.equal(state[k], v.float() if v.is_floating_point() else v)
               for k, v in payload["state_dict"].items())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["teacher", "student", "teacher_bnhead_pruned_kd"])  # the last trained on a GPU
def test_shipped_checkpoint_reproduces_its_recorded_map(name):
    _shipped_payload(name)
    model, label_map, meta = load_checkpoint(shipped_checkpoint(name))
    recorded = meta["val_subset"]
    assert recorded["images"] == VAL_SUBSET_IMAGES
    subset = val_subset(load_split("val", label_map=label_map))
    metrics = evaluate(model, make_loader(subset, batch_size=8, train=False), label_map, progress=False)
    assert metrics["map"] == pytest.approx(recorded["metrics"]["map"], abs=0.005)


def test_shipped_teacher_meets_its_target_and_leads_the_student():
    teacher_meta, student_meta = (_shipped_payload(name)["meta"] for name in ("teacher", "student"))
    assert teacher_meta["val_metrics"]["map"] >= 0.60, teacher_meta["val_metrics"]
    assert teacher_meta["val_metrics"]["map"] - student_meta["val_metrics"]["map"] >= 0.05


def test_unknown_preset_is_a_kit_error():
    with pytest.raises(CompressKitError, match="unknown preset"):
        load_preset("teachr")


def test_package_checkpoints_fit_their_budget_and_each_has_its_training_record():
    folder = shipped_checkpoint("teacher").parent
    checkpoints = sorted(folder.glob("*.pt"))
    assert sum(path.stat().st_size for path in checkpoints) <= 50_000_000  # the package's checkpoint budget
    for path in checkpoints:
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["val_metrics"]["map"] == load_checkpoint(path)[2]["val_metrics"]["map"], path.name


def test_every_backbone_ships_a_training_record_of_the_one_recipe():
    from compresskit.backbones import BACKBONES, TRAIN_RECIPE_BACKBONE
    from compresskit.harness import training_record

    for name in BACKBONES:
        record = training_record(f"backbone_{name}")
        assert record["backbone"] == name and record["train_config"] == asdict(TRAIN_RECIPE_BACKBONE)
        assert record["command"].startswith(f"compresskit train --backbone {name} ")
        assert record["trained_on"] and 0 < record["val_metrics"]["map"] < 1


@pytest.mark.slow
def test_shipped_backbone_checkpoint_reproduces_its_recorded_map():
    model, label_map, meta = load_checkpoint(shipped_checkpoint("backbone_mobilenet_v3_small"))
    subset = val_subset(load_split("val", label_map=label_map))
    metrics = evaluate(model, make_loader(subset, batch_size=8, train=False), label_map, progress=False)
    # trained and first evaluated on a GPU; the same fp16 weights evaluated here on the CPU
    assert metrics["map"] == pytest.approx(meta["val_subset"]["metrics"]["map"], abs=0.005)
