"""The BatchNorm FCOS head for int8 deployment: spec field, conversion from GroupNorm, export, fine-tune job."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import onnx
import pytest
import torch
from torch import nn

from compresskit.data import load_split
from compresskit.data.dataset import LabelMap
from compresskit.engine import frozen_head_statistics
from compresskit.errors import ConfigError
from compresskit.models import (EMBEDDED_PRESETS, DetectorSpec, build_detector, checkpoint_spec, load_checkpoint,
                                load_preset, save_checkpoint, shipped_checkpoint)
from compresskit.models.core import ExportableCore, example_batch, export_core_onnx
from compresskit.quantize.calibration import calibration_batches
from compresskit.quantize.deploy_head import _stacked, batchnorm_head, main
from compresskit.runtimes import OnnxCore

SMALL = 128  # input size of the randomly initialised detectors below: fast, still five FPN levels
BATCH_SPEC = replace(EMBEDDED_PRESETS["student"], head_norm="batch", image_size=SMALL)


def head_norms(detector: nn.Module, kind: type) -> dict[str, nn.Module]:
    return {name: m for name, m in detector.head.named_modules() if isinstance(m, kind)}


def test_spec_round_trip_and_old_specs_load_as_groupnorm():
    assert DetectorSpec.from_json(asdict(BATCH_SPEC)) == BATCH_SPEC
    old = asdict(EMBEDDED_PRESETS["teacher"])
    del old["head_norm"]  # a checkpoint written before the field existed
    assert DetectorSpec.from_json(old).head_norm == "group"
    assert checkpoint_spec(shipped_checkpoint("student")).head_norm == "group"  # bad values: tests/test_configs.py


def test_batch_head_builds_trains_and_saves(tmp_path):
    torch.manual_seed(0)
    detector = build_detector(BATCH_SPEC)
    assert len(head_norms(detector, nn.BatchNorm2d)) == 2 * BATCH_SPEC.head_convs
    assert not head_norms(detector, nn.GroupNorm)
    detector.train()
    images = [torch.rand(3, SMALL, SMALL) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([2])} for _ in range(2)]
    losses = detector(images, targets)
    loss = sum(losses.values())
    loss.backward()
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(value) for value in losses.values())
    norm = next(iter(head_norms(detector, nn.BatchNorm2d).values()))
    assert norm.weight.grad is not None and norm.num_batches_tracked > 0  # trained in train mode
    label_map = LabelMap.contiguous([{"id": i * 2 + 1, "name": f"c{i}"} for i in range(6)])
    path = save_checkpoint(tmp_path / "bn.pt", detector.eval(), BATCH_SPEC, label_map)
    reloaded, _, _ = load_checkpoint(path)
    assert checkpoint_spec(path).head_norm == "batch"
    for name, module in head_norms(reloaded, nn.BatchNorm2d).items():
        assert torch.equal(module.running_mean, head_norms(detector, nn.BatchNorm2d)[name].running_mean)


def test_exported_batch_head_core_folds_every_norm_into_conv(tmp_path):
    torch.manual_seed(0)
    batch_detector, group_detector = build_detector(BATCH_SPEC), build_detector(replace(BATCH_SPEC,
                                                                                       head_norm="group"))
    for norm in head_norms(batch_detector, nn.BatchNorm2d).values():  # non-trivial statistics to fold
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
    example = example_batch(SMALL)
    batch_path = export_core_onnx(ExportableCore(batch_detector.eval()), tmp_path / "bn.onnx", example=example)
    group_path = export_core_onnx(ExportableCore(group_detector.eval()), tmp_path / "gn.onnx", example=example)
    batch_ops = [node.op_type for node in onnx.load(str(batch_path)).graph.node]
    group_ops = [node.op_type for node in onnx.load(str(group_path)).graph.node]
    assert "InstanceNormalization" in group_ops  # what the GroupNorm head costs
    assert "InstanceNormalization" not in batch_ops and "BatchNormalization" not in batch_ops
    assert batch_ops.count("Conv") == group_ops.count("Conv")
    with torch.inference_mode():
        eager = ExportableCore(batch_detector)(example)
    for ours, theirs in zip(OnnxCore(batch_path, threads=1)(example), eager):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def shipped_student():
    detector, label_map, _ = load_preset("student")
    return detector, label_map, checkpoint_spec(shipped_checkpoint("student"))


def test_batchnorm_head_keeps_weights_and_measures_statistics(shipped_student, tiny_embedded):
    detector, label_map, spec = shipped_student
    calibration_set = load_split("train", tiny_embedded, train_transforms=False, label_map=label_map)
    before = {key: value.clone() for key, value in detector.state_dict().items()}
    converted, converted_spec = batchnorm_head(detector, spec, calibration_set, images=8)
    assert converted_spec == replace(spec, head_norm="batch")
    assert all(torch.equal(value, detector.state_dict()[key]) for key, value in before.items())  # input untouched
    assert head_norms(detector, nn.GroupNorm) and not head_norms(converted, nn.GroupNorm)
    for name, module in converted.named_modules():
        if isinstance(module, nn.Conv2d) or (isinstance(module, nn.BatchNorm2d) and not name.startswith("head")):
            for key, value in module.state_dict().items():  # every conv, and the trunk's own statistics
                assert torch.equal(value, before[f"{name}.{key}"]), f"{name}.{key} changed"
    norms = head_norms(converted, nn.BatchNorm2d)
    assert len(norms) == 2 * spec.head_convs and not converted.training
    for name, norm in norms.items():
        assert torch.equal(norm.weight, before[f"head.{name}.weight"])  # the GroupNorm's affine
        assert torch.equal(norm.bias, before[f"head.{name}.bias"])
        assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.momentum == 0.1 and not norm.training
    # The first norm of a tower sees conv(FPN level), which no norm influences: recompute its statistics on the
    # same 8 images (one batch) and check they are the plain average over the five levels (momentum=None).
    drawn = _stacked(calibration_batches(detector, calibration_set, images=8), 16)
    assert len(drawn) == 1 and drawn[0].shape[0] == 8
    captured = []
    first = norms["classification_head.conv.1"]
    hook = first.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    with torch.inference_mode():
        ExportableCore(converted)(drawn[0])
    hook.remove()
    assert len(captured) == 5  # one forward per FPN level
    expected_mean = torch.stack([level.mean(dim=(0, 2, 3)) for level in captured]).mean(dim=0)
    expected_var = torch.stack([level.var(dim=(0, 2, 3)) for level in captured]).mean(dim=0)  # unbiased, as BN
    torch.testing.assert_close(first.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.running_var, expected_var, rtol=1e-4, atol=1e-5)


def test_batchnorm_head_refuses_what_it_cannot_convert(shipped_student, tiny_embedded):
    detector, label_map, spec = shipped_student
    calibration_set = load_split("train", tiny_embedded, train_transforms=False, label_map=label_map)
    with pytest.raises(ConfigError, match="head_norm"):
        batchnorm_head(detector, replace(spec, head_norm="batch"), calibration_set, images=2)
    with pytest.raises(ConfigError, match="no GroupNorm"):
        batchnorm_head(build_detector(replace(spec, head_norm="batch")), spec, calibration_set, images=2)
    with pytest.raises(ConfigError, match="only 24"):
        batchnorm_head(detector, spec, calibration_set, images=25)


def test_frozen_head_statistics_normalise_as_deployed_while_training():
    torch.manual_seed(0)
    detector = build_detector(BATCH_SPEC).train()
    norm = detector.head.regression_head.conv[4]
    norm.running_mean.uniform_(-0.5, 0.5)
    norm.running_var.uniform_(0.5, 2.0)
    stored = (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked))
    seen = []
    hook = norm.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    with frozen_head_statistics(detector):
        sum(output.sum() for output in ExportableCore(detector)(example_batch(SMALL, batch=2))).backward()
    assert len(seen) == 5
    for inputs, output in seen:  # eval-mode normalisation inside a train-mode model
        expected = nn.functional.batch_norm(inputs, stored[0], stored[1], norm.weight, norm.bias, training=False)
        torch.testing.assert_close(output, expected)
    assert torch.equal(norm.running_mean, stored[0]) and int(norm.num_batches_tracked) == stored[2]
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0  # the affine still trains
    detector.train()
    ExportableCore(detector)(example_batch(SMALL, batch=2))  # outside the context: batch statistics again
    assert hook.remove() is None and int(norm.num_batches_tracked) == stored[2] + 5
    with pytest.raises(ConfigError, match="no BatchNorm2d"):
        with frozen_head_statistics(build_detector(replace(BATCH_SPEC, head_norm="group"))):
            pass


def test_command_line_rejects_non_positive_counts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a user error in the data folder: one message, no traceback
        main(["--preset", "student", "--out", str(tmp_path), "--data", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_job_writes_a_batchnorm_checkpoint(tmp_path, tiny_embedded, capsys):
    path = main(["--preset", "student", "--out", str(tmp_path), "--epochs", "1", "--max-iters", "2",
                 "--data", str(tiny_embedded)])
    assert path == tmp_path / "student_bnhead.pt" and str(path) in capsys.readouterr().out
    detector, _, meta = load_checkpoint(path)
    assert checkpoint_spec(path).head_norm == "batch"
    assert head_norms(detector, nn.BatchNorm2d) and not head_norms(detector, nn.GroupNorm)
    assert meta["head_norm"] == "batch" and meta["preset"] == "student" and meta["calibration_images"] == 24
    assert meta["train_config"]["epochs"] == 1 and meta["trained_on"]
    assert 0 <= meta["map_before_finetune"]["map"] <= 1 and 0 <= meta["val_metrics"]["map"] <= 1
    assert len(meta["history"]) == 1 and meta["resumed_after_epochs"] == []
    assert not (tmp_path / "student_bnhead-run").exists()  # shipped: the resume checkpoint is spent
    assert json.loads(path.with_suffix(".json").read_text())["head_norm"] == "batch"
    # The fine-tune trained the weights but kept the head statistics measured on the (24) train images.
    student, label_map, _ = load_preset("student")
    calibration_set = load_split("train", tiny_embedded, train_transforms=False, label_map=label_map)
    converted, _ = batchnorm_head(student, checkpoint_spec(shipped_checkpoint("student")), calibration_set,
                                  images=24)
    shipped_state, converted_state = detector.state_dict(), converted.state_dict()
    statistics = [key for key in converted_state if key.startswith("head.") and "running_" in key]
    assert len(statistics) == 4 * EMBEDDED_PRESETS["student"].head_convs
    for key in statistics:  # stored as fp16
        torch.testing.assert_close(shipped_state[key], converted_state[key].half().float())
    conv = "head.classification_head.conv.0.weight"
    assert not torch.allclose(shipped_state[conv], converted_state[conv].half().float())  # while the convs trained
