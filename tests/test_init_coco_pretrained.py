"""Fine-tuning the coco profile's COCO-pretrained detector on a dataset of your own (``--init coco-pretrained``),
offline: pretrained weights from a cache of random values, or one clear error and nothing written; the class-sized
tensors start afresh even where their shapes match; the torchvision checkpoint kind loads, evaluates and refuses
a tampered model name."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model_weights
from torchvision.models.detection.ssd import SSD

from compresskit.cli import main
from compresskit.data.dataset import LabelMap
from compresskit.data.example_export import write_example_export
from compresskit.data.split import SplitConfig, split_dataset
from compresskit.engine import TrainConfig
from compresskit.engine.recipes import evaluate_preset, train_preset
from compresskit.errors import CheckpointError, ConfigError
from compresskit.models import (COCO_PRESETS, build_coco_architecture, checkpoint_spec, load_checkpoint,
                                save_torchvision_checkpoint, transfer_weights_)

BACKBONE_TENSOR = "backbone.features.0.0.0.weight"  # the trunk's first conv: COCO-pretrained, never class-sized


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory) -> Path:
    """The example export (category ids 0, 3, 7) split into the kit's layout."""
    root = tmp_path_factory.mktemp("coco_pretrained")
    annotations = write_example_export(root / "export", images=12)
    split_dataset(annotations, root / "export" / "images", root / "split", SplitConfig(val_fraction=0.34, seed=0))
    return root / "split"


def _cache_student_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Put a random COCO-sized (91-class) SSDlite state dict where ``load_coco_pretrained`` looks; return it."""
    weights = get_model_weights(COCO_PRESETS["student"]).DEFAULT
    cached = folder / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    state = build_coco_architecture("student", num_classes=91).state_dict()
    torch.save(state, cached)
    return state


def _class_head_final_convs(levels: int = 6) -> list[str]:
    return [f"head.classification_head.module_list.{level}.1.{kind}" for level in range(levels)
            for kind in ("weight", "bias")]


def test_ssdlite_class_head_restarts_even_when_its_shape_fits():
    # Two 4-class models: every shape fits, so only the names can keep the class slots from carrying over.
    source = build_coco_architecture("student", num_classes=4)
    target = build_coco_architecture("student", num_classes=4)
    report = transfer_weights_(target, source, same_categories=False)
    assert sorted(report["reinitialised"]) == sorted(_class_head_final_convs())
    assert "head.classification_head.module_list.0.0.0.weight" in report["kept"]  # depthwise: class-independent
    assert transfer_weights_(target, source, same_categories=True)["reinitialised"] == []


@pytest.mark.slow  # 35-60 s on two CPU cores: seven SSDlite builds, one step, five evaluations
def test_train_student_from_coco_weights(own_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path / "weights"))
    pretrained = _cache_student_weights(tmp_path / "weights")
    # A tiny learning rate: one step leaves the trunk at its pretrained values to well within fp16 precision.
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-6, warmup_iters=1, workers=0)
    checkpoint = train_preset("student", tmp_path / "out", data_dir=own_dataset, config=config,
                              max_iters_per_epoch=1, progress=False, init="coco-pretrained")
    assert checkpoint == tmp_path / "out" / "student.pt" and checkpoint.with_suffix(".json").is_file()
    detector, label_map, meta = load_checkpoint(checkpoint)
    assert isinstance(detector, SSD) and not detector.training
    assert label_map.category_ids == (0, 3, 7)
    assert meta["init"] == "coco-pretrained" and meta["torchvision_model"] == COCO_PRESETS["student"]
    assert meta["weights_verified"] is False  # random values in torchvision's file name: a stand-in, said so
    assert meta["input_size"]["fixed_size"] == [320, 320] and meta["trained_on"]  # SSDlite's fixed input
    assert sorted(meta["reinitialised"]) == sorted(_class_head_final_convs())
    assert meta["kept_tensors"] == len(detector.state_dict()) - len(meta["reinitialised"])
    assert 0.0 <= meta["val_metrics"]["map"] <= 1.0 and meta["preset"] == "student"
    assert json.loads(checkpoint.with_suffix(".json").read_text())["init"] == "coco-pretrained"
    stored = detector.state_dict()[BACKBONE_TENSOR]
    assert torch.allclose(stored, pretrained[BACKBONE_TENSOR].half().float(), rtol=0, atol=1e-4)
    with pytest.raises(CheckpointError, match="no DetectorSpec"):
        checkpoint_spec(checkpoint)
    result = evaluate_preset("student", data_dir=own_dataset, checkpoint=checkpoint, progress=False)
    assert 0.0 <= result["map"] <= 1.0 and result["macs"] > 0 and result["images"] >= 1
    metrics = tmp_path / "metrics.json"  # the command line reads the same checkpoint the same way
    assert main(["evaluate", "--preset", "student", "--checkpoint", str(checkpoint), "--data", str(own_dataset),
                 "--json", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["map"] == pytest.approx(result["map"])


def test_offline_without_cached_weights_is_one_message_and_writes_nothing(own_dataset, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path / "weights"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    out = tmp_path / "out"
    code = main(["train", "--preset", "student", "--data", str(own_dataset), "--init", "coco-pretrained",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "COMPRESSKIT_WEIGHTS" in err and "Traceback" not in err
    assert not out.exists()


def test_coco_pretrained_needs_a_dataset_of_your_own_and_a_preset(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--init shipped"):
        train_preset("student", tmp_path / "out", init="coco-pretrained")
    code = main(["train", "--backbone", "mobilenet_v3_small", "--init", "coco-pretrained", "--out", str(tmp_path)])
    assert code == 2 and "--init coco-pretrained applies to --preset only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_torchvision_checkpoint_round_trip_and_tampered_name(tmp_path):
    label_map = LabelMap.contiguous([{"id": 0, "name": "disc"}, {"id": 3, "name": "tile"}])
    model = build_coco_architecture("student", num_classes=label_map.num_classes)
    path = save_torchvision_checkpoint(tmp_path / "ssd.pt", model, COCO_PRESETS["student"], label_map.num_classes,
                                       label_map, meta={"note": "round trip"})
    loaded, loaded_map, meta = load_checkpoint(path)
    assert isinstance(loaded, SSD) and loaded_map == label_map and meta == {"note": "round trip"}
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    payload = torch.load(path, weights_only=True)
    for tampered in ("resnet18", "os.system", 3):  # a classifier, no model at all, not a name
        payload["torchvision"]["model"] = tampered
        torch.save(payload, tmp_path / "tampered.pt")
        with pytest.raises(CheckpointError, match="tampered.pt"):
            load_checkpoint(tmp_path / "tampered.pt")


def test_cached_weights_are_verified_against_the_digest_in_their_official_name(tmp_path, monkeypatch):
    from compresskit.models import coco_weights_verified

    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path / "weights"))
    assert coco_weights_verified("student") is None
    _cache_student_weights(tmp_path / "weights")
    assert coco_weights_verified("student") is False
    # A file whose SHA-256 starts with the name's digest passes: rename the stand-in after its own digest.
    import hashlib

    [cached] = (tmp_path / "weights" / "checkpoints").iterdir()
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()[:8]
    official = get_model_weights(COCO_PRESETS["student"]).DEFAULT.url.rsplit("/", 1)[1]
    monkeypatch.setattr(type(get_model_weights(COCO_PRESETS["student"]).DEFAULT), "url",
                        property(lambda self: f"https://example.invalid/{official.rsplit('-', 1)[0]}-{digest}.pth"),
                        raising=False)
    cached.rename(cached.with_name(f"{official.rsplit('-', 1)[0]}-{digest}.pth"))
    assert coco_weights_verified("student") is True


def test_a_resnet_detector_fine_tunes_with_its_trunk_frozen_as_torchvision_does(tmp_path):
    from torchvision.ops import FrozenBatchNorm2d

    from compresskit.models import freeze_resnet_trunk_

    torch.manual_seed(0)
    model = build_coco_architecture("teacher", num_classes=4)  # RetinaNet ResNet-50 FPN v2, random values
    body = model.backbone.body
    before = {name: tensor.clone() for name, tensor in body.state_dict().items()}
    assert freeze_resnet_trunk_(model) and not freeze_resnet_trunk_(build_coco_architecture("student", num_classes=4))
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in body.modules())
    assert all(torch.equal(body.state_dict()[name], value) for name, value in before.items()
               if not name.endswith("num_batches_tracked"))  # frozen with the values it had
    trainable = {name.split(".")[0] for name, param in body.named_parameters() if param.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    # One training step moves layer2 and leaves the stem, layer1 and every BatchNorm statistic where they were.
    model.train()
    images = [torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    optimizer = torch.optim.SGD([param for param in model.parameters() if param.requires_grad], lr=0.1)
    sum(model(images, targets).values()).backward()
    optimizer.step()
    after = body.state_dict()
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert torch.equal(after["layer3.0.bn1.running_var"], before["layer3.0.bn1.running_var"])
    assert not torch.equal(after["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
    # The checkpoint says so, and loads back into the same frozen architecture, strictly.
    path = save_torchvision_checkpoint(tmp_path / "teacher.pt", model, COCO_PRESETS["teacher"], 4,
                                       LabelMap.contiguous([{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]))
    loaded, _, _ = load_checkpoint(path)
    assert isinstance(loaded.backbone.body.bn1, FrozenBatchNorm2d)
    assert all(torch.equal(loaded.state_dict()[name], value) for name, value in model.state_dict().items())


def test_a_subset_of_cocos_own_categories_keeps_each_class_slot_of_the_pretrained_head():
    from compresskit.models import carry_class_slots_, coco_slots

    pretrained_labels = LabelMap.identity([{"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                                           {"id": 18, "name": "dog"}])
    subset = LabelMap.contiguous([{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}])  # labels 1: person, 2: dog
    assert coco_slots(subset, pretrained_labels) == [0, 1, 18]
    renamed = LabelMap.contiguous([{"id": 18, "name": "wolf"}])  # a COCO id with another meaning: fresh slots
    assert coco_slots(renamed, pretrained_labels) is None
    assert coco_slots(LabelMap.contiguous([{"id": 95, "name": "dog"}]), pretrained_labels) is None

    torch.manual_seed(0)
    source = build_coco_architecture("student", num_classes=91)
    target = build_coco_architecture("student", num_classes=3)
    carried = carry_class_slots_(target, source, [0, 1, 18])
    assert sorted(carried) == sorted(_class_head_final_convs())
    name = "head.classification_head.module_list.0.1.weight"
    anchors = target.state_dict()[name].shape[0] // 3
    before = source.state_dict()[name].reshape(anchors, 91, *source.state_dict()[name].shape[1:])
    after = target.state_dict()[name].reshape(anchors, 3, *before.shape[2:])
    assert torch.equal(after[:, 2], before[:, 18]) and torch.equal(after[:, 1], before[:, 1])
