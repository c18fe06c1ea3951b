"""Pruning: the failing whole-model call, unstructured sparsity, detection-aware channel pruning (GroupNorm heads
included), per-part ratios, sensitivity, iterative targets, ONNX export and safe checkpoints of pruned models."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from compresskit.data.dataset import LabelMap
from compresskit.data.embedded import CATEGORIES
from compresskit.report import plot_sensitivity
from compresskit.errors import CheckpointError, ConfigError
from compresskit.measure import count_params, serialized_size
from compresskit.models import (EMBEDDED_PRESETS, architecture_of, build_coco_architecture, build_detector,
                                load_checkpoint, save_checkpoint)
from compresskit.models.core import ExportableCore, example_batch, export_core_onnx
from compresskit.prune import (StructuredConfig, UnstructuredConfig, channel_report, choose_part_ratios,
                               conv_sparsity, core_macs, detector_parts, iterative_prune, make_permanent_,
                               prediction_layers, prune_structured_, prune_unstructured_,
                               sensitivity_scan, whole_model_l1_call)
from compresskit.prune.structured import _WholeGroupNormPruner
from compresskit.runtimes import OnnxCore

STUDENT = EMBEDDED_PRESETS["student"]
SMALL = 128  # example size for tracing and MACs where the exact figure does not matter


def _student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_detector(STUDENT).eval()


def _out_channels(modules: list[nn.Module]) -> list[int]:
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for layer in modules for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.fixture(scope="module")
def pruned_teacher():
    torch.manual_seed(0)
    teacher = build_detector(EMBEDDED_PRESETS["teacher"]).eval()
    before = core_macs(teacher)
    prune_structured_(teacher, StructuredConfig(ratio=0.5))
    return teacher, before


# --------------------------------------------------------------------------------------------- unstructured
def test_whole_model_call_fails_because_a_detector_has_no_weight():
    detector = _student()
    message = whole_model_l1_call(detector)
    assert message.startswith("AttributeError") and "weight" in message
    assert not any(name.endswith("_orig") for name, _ in detector.named_parameters())  # the model is untouched


@pytest.fixture(scope="module")
def dense_student_size():
    return serialized_size(_student())


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_unstructured_sparsity_is_the_requested_amount_and_survives_make_permanent(amount, scope,
                                                                                  dense_student_size):
    detector = prune_unstructured_(_student(), UnstructuredConfig(amount=amount, scope=scope))
    convs = [m for m in detector.modules() if isinstance(m, nn.Conv2d)]
    assert all(hasattr(conv, "weight_mask") for conv in convs)  # every conv, prediction convs included
    assert conv_sparsity(detector) == pytest.approx(amount, abs=0.01)
    make_permanent_(detector)
    assert conv_sparsity(detector) == pytest.approx(amount, abs=0.01)
    keys = detector.state_dict().keys()
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    size = serialized_size(detector)
    assert size.bytes == pytest.approx(dense_student_size.bytes, rel=0.01)  # zeros are still stored
    assert size.gzip_bytes < dense_student_size.gzip_bytes * (1 - amount / 3)


def test_an_unstructured_config_edited_after_creation_is_checked_again():
    config = UnstructuredConfig()
    config.scope = "model"
    detector = _student()
    with pytest.raises(ConfigError, match="scope = 'model'"):
        prune_unstructured_(detector, config)
    assert not any(hasattr(m, "weight_mask") for m in detector.modules())  # refused before any conv was touched


# --------------------------------------------------------------------------------------------- structured
def test_prediction_layers_reject_unknown_detectors():
    with pytest.raises(TypeError, match="FCOS"):
        prediction_layers(nn.Sequential(nn.Conv2d(3, 8, 3)))


@pytest.mark.parametrize("name", ["embedded", "teacher", "student", "fasterrcnn_mobile"])
def test_prediction_layers_keep_their_outputs(name):
    torch.manual_seed(0)
    detector = build_detector(STUDENT).eval() if name == "embedded" else build_coco_architecture(name)
    size = 96 if name == "teacher" else SMALL  # RetinaNet R50 (GroupNorm head): trace it small
    predictions = prediction_layers(detector)
    expected = _out_channels(predictions)
    macs = core_macs(detector, size)
    prune_structured_(detector, StructuredConfig(ratio=0.5, image_size=size))
    assert _out_channels(predictions) == expected
    assert core_macs(detector, size) < macs * 0.75
    if name != "teacher":  # the others are cheap to run end to end (torchvision's transform, anchors, NMS)
        with torch.inference_mode():
            output = detector([torch.rand(3, 240, 320)])[0]
        assert set(output) >= {"boxes", "scores", "labels"}
    else:
        with torch.inference_mode():
            ExportableCore(detector)(example_batch(size))


def test_detector_parts_of_the_embedded_fcos():
    parts = detector_parts(_student())
    assert list(parts) == ["stem", "layer1", "layer2", "layer3", "layer4", "fpn", "head"]


def test_a_part_ratio_prunes_only_that_part():
    detector = _student()
    before = {row["name"]: row for row in channel_report(detector)}
    prune_structured_(detector, StructuredConfig(ratio=0.0, part_ratios={"layer3": 0.5}, image_size=SMALL))
    after = {row["name"]: row for row in channel_report(detector)}
    layer3 = [name for name in before if name.startswith("backbone.body.layer3.")]
    assert layer3 and all(after[n]["out_channels"] == before[n]["out_channels"] // 2 for n in layer3)
    assert all(after[n]["out_channels"] == before[n]["out_channels"] for n in before if n not in layer3)
    assert all(after[n] == before[n] for n in before if n.startswith("backbone.body.layer1."))
    with pytest.raises(KeyError, match="layer9"):
        prune_structured_(_student(), StructuredConfig(part_ratios={"layer9": 0.5}, image_size=SMALL))


def test_global_pruning_runs_and_shrinks():
    detector = _student()
    macs = core_macs(detector, SMALL)
    prune_structured_(detector, StructuredConfig(ratio=0.4, global_pruning=True, image_size=SMALL))
    assert core_macs(detector, SMALL) < macs
    assert all(r["out_channels"] % 8 == 0 for r in channel_report(detector)
               if "cls_logits" not in r["name"] and "bbox_" not in r["name"])


def test_group_norm_loses_whole_groups_and_computes_the_same_on_kept_channels():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 12)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    features = torch.randn(2, 12, 5, 5)
    expected = norm(features)
    kept = [c for c in range(12) if c not in (3, 4, 5)]
    _WholeGroupNormPruner().prune_out_channels(norm, [3, 4, 5])
    assert (norm.num_groups, norm.num_channels) == (3, 9)
    torch.testing.assert_close(norm(features[:, kept]), expected[:, kept])
    with pytest.raises(ValueError, match="whole groups"):
        _WholeGroupNormPruner().prune_out_channels(norm, [0])


def test_teacher_at_half_has_half_the_macs_and_aligned_channels(pruned_teacher):
    teacher, before = pruned_teacher
    after = core_macs(teacher)
    assert before / after >= 2.0, (before, after)
    prediction = {id(m) for m in prediction_layers(teacher)}
    convs = [m for m in teacher.modules() if isinstance(m, nn.Conv2d) and id(m) not in prediction]
    assert all(conv.out_channels % 8 == 0 and conv.in_channels % 8 in (0, 3) for conv in convs)
    tower = teacher.head.classification_head.conv
    assert tower[0].out_channels < EMBEDDED_PRESETS["teacher"].fpn_channels  # the GroupNorm head shrank too
    norms = [m for m in teacher.head.modules() if isinstance(m, nn.GroupNorm)]
    assert all(n.num_channels // n.num_groups == 3 for n in norms)  # same group size as GroupNorm(32, 96)


def test_pruned_teacher_still_trains_and_detects(pruned_teacher):
    teacher, _ = pruned_teacher
    images = [torch.rand(3, 320, 320), torch.rand(3, 320, 320)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 140.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 60.0, 90.0, 200.0]]), "labels": torch.tensor([3])}]
    teacher.train()
    try:
        losses = teacher(images, targets)
        total = sum(losses.values())
        total.backward()
    finally:
        teacher.zero_grad(set_to_none=True)
        teacher.eval()
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    with torch.inference_mode():
        detections = teacher(images)
    assert len(detections) == 2 and all(d["boxes"].shape[-1] == 4 for d in detections)


def test_pruned_core_exports_to_onnx(pruned_teacher, tmp_path):
    teacher, _ = pruned_teacher
    core = ExportableCore(teacher).eval()
    path = export_core_onnx(core, tmp_path / "pruned.onnx")
    with torch.inference_mode():
        reference = core(example_batch())
    for expected, actual in zip(reference, OnnxCore(path, threads=1)(example_batch())):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)


# --------------------------------------------------------------------------------------------- sensitivity
def test_sensitivity_scan_rows_plot_and_choice():
    detector = _student()
    dense = count_params(detector)
    rows = sensitivity_scan(detector, parts=["layer1", "head"], ratios=[0.0, 0.5],
                            evaluate_fn=lambda model: 0.5 * count_params(model) / dense,
                            config=StructuredConfig(image_size=SMALL), progress=False)
    assert [(r["part"], r["ratio"]) for r in rows] == [("layer1", 0.0), ("layer1", 0.5), ("head", 0.0),
                                                       ("head", 0.5)]
    assert rows[0]["map"] == 0.5 and rows[1]["macs"] < rows[0]["macs"] and rows[3]["map"] < rows[2]["map"]
    assert count_params(detector) == dense  # the scan works on copies
    figure = plot_sensitivity(rows, baseline_map=0.5)
    assert isinstance(figure, Figure) and len(figure.axes[0].lines) == 2 + 1  # two parts + the zero line
    budget = (0.5 - rows[1]["map"]) * 100 + 1e-6  # exactly what pruning layer1 by half costs
    assert choose_part_ratios(rows, 0.5, max_drop_points=budget) == {"layer1": 0.5, "head": 0.0}
    assert choose_part_ratios(rows, 0.5, max_drop_points=100.0, candidates=[0.0]) == {"layer1": 0.0, "head": 0.0}


def test_iterative_prune_hits_cumulative_targets_of_the_original_widths():
    detector = _student()
    widths = []

    def finetune(model: nn.Module, step: int) -> None:
        widths.append((model.backbone.body.layer4[0].conv1.out_channels,
                       model.head.classification_head.conv[0].out_channels))

    records = iterative_prune(detector, steps=[0.25, 0.5], finetune=finetune, evaluate_fn=lambda model: 0.1,
                              config=StructuredConfig(image_size=SMALL))
    layer4, head = STUDENT.widths[4], STUDENT.fpn_channels
    assert widths == [(layer4 * 3 // 4, head * 3 // 4), (layer4 // 2, head // 2)]  # not 0.75 x 0.5 = 37.5 %
    assert [r["step"] for r in records] == [1, 2] and [r["ratio"] for r in records] == [0.25, 0.5]
    assert records[1]["macs_pruned"] < records[0]["macs_pruned"] == records[0]["macs_finetuned"]
    assert {"map_pruned", "map_finetuned"} <= set(records[0])


# --------------------------------------------------------------------------------------------- checkpoints
class _NotATensor:
    pass


def _assert_same_core_outputs(first: nn.Module, second: nn.Module) -> None:
    batch = example_batch(SMALL)
    with torch.inference_mode():
        for expected, actual in zip(ExportableCore(first)(batch), ExportableCore(second)(batch), strict=True):
            assert expected.numel() > 0 and torch.equal(expected, actual)


def test_pruned_round_trip_is_exact_and_safe(tmp_path):
    detector = prune_structured_(_student(), StructuredConfig(ratio=0.5, image_size=SMALL))
    label_map = LabelMap.contiguous(CATEGORIES)
    path = save_checkpoint(tmp_path / "pruned.pt", detector, STUDENT, label_map, meta={"ratio": 0.5})
    payload = torch.load(path, weights_only=True)  # plain data and tensors only
    assert payload["architecture"] == architecture_of(detector)
    assert payload["architecture"] != architecture_of(_student())  # the channel counts really were stored
    loaded, loaded_map, meta = load_checkpoint(path)
    assert meta == {"ratio": 0.5} and loaded_map == label_map and not loaded.training
    _assert_same_core_outputs(detector, loaded)
    assert channel_report(loaded) == channel_report(detector)


def test_frozen_batch_norm_trunk_prunes_saves_and_reloads_exactly(tmp_path):
    from torchvision.ops import FrozenBatchNorm2d

    spec = replace(STUDENT, frozen_bn=True)
    torch.manual_seed(0)
    detector = build_detector(spec).eval()
    norms = [m for m in detector.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms
    for norm in norms:  # statistics unlike the identity defaults, so a lost buffer would show in the outputs
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    widths = [norm.weight.numel() for norm in norms]
    prune_structured_(detector, StructuredConfig(ratio=0.5, image_size=SMALL))
    assert all(norm.weight.numel() < width for norm, width in zip(norms, widths))
    assert all(norm.running_var.numel() == norm.weight.numel() for norm in norms)
    path = save_checkpoint(tmp_path / "frozen.pt", detector, spec, LabelMap.contiguous(CATEGORIES))
    stored = torch.load(path, weights_only=True)["architecture"]
    names = {id(module): name for name, module in detector.named_modules()}
    assert all(stored[names[id(norm)]] == {"type": "FrozenBatchNorm2d", "num_features": norm.weight.numel()}
               for norm in norms)
    loaded, _, _ = load_checkpoint(path)
    _assert_same_core_outputs(detector, loaded)
    assert architecture_of(loaded) == architecture_of(detector)


def test_pruned_torchvision_trunk_with_depthwise_convs_saves_and_reloads_exactly(tmp_path):
    spec = replace(STUDENT, backbone="mobilenet_v3_large", image_size=SMALL)
    torch.manual_seed(0)
    detector = build_detector(spec).eval()
    before = architecture_of(detector)
    prune_structured_(detector, StructuredConfig(ratio=0.3, image_size=SMALL))
    after = architecture_of(detector)
    depthwise = [name for name, shape in after.items() if shape.get("groups", 1) > 1]
    assert depthwise and any(after[name]["groups"] < before[name]["groups"] for name in depthwise)
    path = save_checkpoint(tmp_path / "mobile.pt", detector, spec, LabelMap.contiguous(CATEGORIES))
    loaded, _, _ = load_checkpoint(path)
    _assert_same_core_outputs(detector, loaded)
    assert architecture_of(loaded) == after


def test_tampered_pruned_files_raise_checkpoint_error(tmp_path):
    detector = prune_structured_(_student(), StructuredConfig(ratio=0.5, image_size=SMALL))
    path = save_checkpoint(tmp_path / "pruned.pt", detector, STUDENT, LabelMap.contiguous(CATEGORIES))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["backbone.body.layer2.0.conv1"]["out_channels"] += 8
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save(payload, wrong_shape)
    code = tmp_path / "code.pt"
    buffer = io.BytesIO()
    torch.save({**payload, "meta": _NotATensor()}, buffer)
    code.write_bytes(buffer.getvalue())
    for bad in (truncated, wrong_shape, code, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match=bad.name):
            load_checkpoint(bad)


def test_save_refuses_unstructured_masks(tmp_path):
    detector = prune_unstructured_(_student(), UnstructuredConfig(amount=0.3))
    with pytest.raises(CheckpointError, match="make_permanent_"):
        save_checkpoint(tmp_path / "masked.pt", detector, STUDENT, LabelMap.contiguous(CATEGORIES))


def test_prune_and_finetune_recipe_writes_a_loadable_smaller_detector(tiny_embedded, tmp_path):
    from compresskit.engine import TrainConfig
    from compresskit.prune import prune_and_finetune

    spec = replace(EMBEDDED_PRESETS["student"], widths=[8, 16, 16, 32, 32], fpn_channels=32, head_convs=1)
    teacher = build_detector(spec).eval()
    source = save_checkpoint(tmp_path / "teacher.pt", teacher, spec, LabelMap.contiguous(CATEGORIES),
                             meta={"val_metrics": {"map": 0.0}})
    checkpoint = prune_and_finetune(tmp_path / "out", prune_config=StructuredConfig(ratio=0.5),
                                    train_config=TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0),
                                    data_dir=tiny_embedded, max_iters_per_epoch=2, progress=False,
                                    checkpoint=source)
    model, _, meta = load_checkpoint(checkpoint)
    assert meta["macs_after"] < meta["macs_before"] / 2
    assert core_macs(model) == meta["macs_after"]
    assert set(meta["val_metrics"]) >= {"map", "map50"} and meta["val_subset"]["images"] == 100
    assert meta["teacher_val_metrics"] == {"map": 0.0}
    assert json.loads((tmp_path / "out" / "teacher_pruned.json").read_text()) == meta


@pytest.mark.slow
def test_shipped_pruned_teacher_reproduces_its_recorded_map():
    from compresskit.data import load_split
    from compresskit.engine import evaluate, make_loader, val_subset
    from compresskit.models import shipped_checkpoint
    from compresskit.prune import SHIPPED_PRUNED, load_shipped_pruned

    assert shipped_checkpoint(SHIPPED_PRUNED).exists(), "the committed pruned teacher checkpoint is missing"
    model, label_map, meta = load_shipped_pruned()
    loader = make_loader(val_subset(load_split("val", label_map=label_map), meta["val_subset"]["images"]),
                         batch_size=8, train=False)
    metrics = evaluate(model, loader, label_map, progress=False)
    assert metrics["map"] == pytest.approx(meta["val_subset"]["metrics"]["map"], abs=0.005)
    assert meta["macs_before"] / meta["macs_after"] >= 2.0
