"""Distillation: the losses against hand-computed values, the Distiller's hooks, adapters and frozen teacher, and
the recipes that ship distilled checkpoints."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from compresskit.data import CATEGORIES, LabelMap, load_split
from compresskit.data.dataset import collate_fn
from compresskit.distill import (DISTILL_RECIPE, BoxDistiller, Distiller, KDConfig, article_kd_loss, check_label_maps,
                                 distill_student, distillation, fpn_widths, giou_box_loss, gradient_scale,
                                 kd_step_log, sigmoid_kd_loss, softmax_kd_loss)
from compresskit.engine import TRAIN_RECIPES, TrainConfig, fit
from compresskit.errors import CompressKitError, ConfigError
from compresskit.models import EMBEDDED_PRESETS, build_detector, load_checkpoint, load_preset, save_checkpoint

# Small detectors at 128 px: different trunk and FPN widths (GroupNorm(32) in the head wants multiples of 32).
TINY_TEACHER = replace(EMBEDDED_PRESETS["student"], widths=[8, 16, 16, 32, 32], fpn_channels=64, head_convs=1,
                       image_size=128)
TINY_STUDENT = replace(TINY_TEACHER, widths=[8, 8, 16, 16, 32], fpn_channels=32)
QUICK = TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0)
ALL_TERMS = {"kd_logit", "kd_ctrness", "kd_box", "kd_feature"}


def _tiny_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return build_detector(TINY_STUDENT), build_detector(TINY_TEACHER).eval()


def _batch(data_dir, size: int = 2) -> tuple[list, list]:
    dataset = load_split("train", data_dir, train_transforms=False)
    images, targets = collate_fn([dataset[index] for index in range(size)])
    return list(images), list(targets)


def _state(module: torch.nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------------ losses
def test_softmax_and_sigmoid_kd_equal_hand_computed_values_on_three_classes():
    student, teacher, temperature = [1.0, 0.0, -1.0], [0.5, 0.5, -2.0], 2.0

    def softmax(logits):
        exps = [math.exp(z / temperature) for z in logits]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher), softmax(student)
    softmax_expected = temperature ** 2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = softmax_kd_loss(torch.tensor([student]), torch.tensor([teacher]), temperature)
    assert got.item() == pytest.approx(softmax_expected, rel=1e-5)

    def binary_kl(t, s):
        pt, ps = 1 / (1 + math.exp(-t / temperature)), 1 / (1 + math.exp(-s / temperature))
        return pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))

    first = temperature ** 2 * sum(binary_kl(t, s) for t, s in zip(teacher, student))
    second = temperature ** 2 * sum(binary_kl(t, s) for t, s in zip(student, teacher))  # roles swapped
    students, teachers = torch.tensor([student, teacher]), torch.tensor([teacher, student])
    assert sigmoid_kd_loss(students[:1], teachers[:1], temperature).item() == pytest.approx(first, rel=1e-5)
    weighted = sigmoid_kd_loss(students, teachers, temperature, weight=torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((first + 3 * second) / 4, rel=1e-5)
    assert sigmoid_kd_loss(students, students, temperature).item() == 0.0


def test_article_loss_is_its_formula_and_differs_from_kd_by_the_teacher_entropy():
    generator = torch.Generator().manual_seed(0)
    student, teacher, temperature = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator), 3.0
    formula = -torch.mean(torch.sum(torch.softmax(teacher / temperature, dim=1)
                                    * torch.log(torch.softmax(student / temperature, dim=1)), dim=1))
    assert article_kd_loss(student, teacher, temperature).item() == pytest.approx(formula.item(), rel=1e-6)
    # Cross-entropy = KL + the teacher's entropy: the article's loss is KD without T**2 plus a constant.
    p = torch.softmax(teacher / temperature, dim=1)
    entropy = -(p * p.log()).sum(dim=1).mean()
    kd_without_t2 = softmax_kd_loss(student, teacher, temperature) / temperature ** 2
    assert (article_kd_loss(student, teacher, temperature) - kd_without_t2).item() == pytest.approx(entropy.item(),
                                                                                                    rel=1e-5)


def test_gradients_shrink_as_one_over_t_squared_unless_scaled():
    temperatures = [1.0, 2.0, 4.0, 8.0]
    for loss in ("softmax", "sigmoid"):
        plain = gradient_scale(temperatures, with_t_squared=False, loss=loss)
        scaled = gradient_scale(temperatures, with_t_squared=True, loss=loss)
        assert [row["temperature"] for row in plain] == temperatures
        # grad * T**2 stays about constant from T = 2 on (T = 1 is not yet in the high-temperature regime).
        products = [row["grad_norm"] * row["temperature"] ** 2 for row in plain[1:]]
        assert max(products) / min(products) < 1.3
        assert plain[-1]["grad_norm"] < plain[0]["grad_norm"] / 30
        norms = [row["grad_norm"] for row in scaled]
        assert max(norms) / min(norms) < 1.5


def test_giou_box_loss_is_zero_for_equal_boxes_and_weighted():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    shifted = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 4.0]])  # second: IoU 0.5, same enclosure
    assert giou_box_loss(boxes, boxes).item() == pytest.approx(0.0, abs=1e-6)
    assert giou_box_loss(shifted, boxes, weight=torch.tensor([1.0, 1.0])).item() == pytest.approx(0.25, rel=1e-5)
    assert giou_box_loss(shifted, boxes, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_label_maps_are_checked():  # KDConfig's own checks: tests/test_configs.py
    embedded = LabelMap.contiguous(CATEGORIES)
    check_label_maps(embedded, LabelMap.contiguous(list(reversed(CATEGORIES))))  # same mapping: accepted
    fewer = LabelMap.contiguous(CATEGORIES[:-1])
    missing = CATEGORIES[-1]["id"]
    with pytest.raises(ConfigError, match=rf"category ids \[{missing}\] only in the teacher's"):
        check_label_maps(fewer, embedded)
    renamed = LabelMap(embedded.category_ids, embedded.labels, ("other",) + embedded.names[1:])
    with pytest.raises(ConfigError, match=rf"category {embedded.category_ids[0]} is .* 'other'"):
        check_label_maps(embedded, renamed)


def test_foreground_masks_mark_the_locations_inside_ground_truth_boxes():
    from compresskit.distill.terms import FOREGROUND_FLOOR, foreground_masks

    features = {"0": torch.zeros(2, 1, 4, 4), "1": torch.zeros(2, 1, 2, 2)}  # strides 8 and 16 on a 32 px input
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 12.0, 12.0]])}, {"boxes": torch.zeros(0, 4)}]
    masks = foreground_masks(targets, features, input_height=32)
    expected = torch.full((4, 4), FOREGROUND_FLOOR)
    expected[:2, :2] = 1.0  # locations (0, 0), (0, 8), (8, 0), (8, 8)
    assert torch.equal(masks["0"][0], expected) and torch.equal(masks["0"][1], torch.full((4, 4), FOREGROUND_FLOOR))
    assert torch.equal(masks["1"][0], torch.tensor([[1.0, FOREGROUND_FLOOR], [FOREGROUND_FLOOR, FOREGROUND_FLOOR]]))


# ------------------------------------------------------------------------------------------------ the Distiller
def test_adapters_map_every_student_level_to_the_teacher_shape():
    student, teacher = _tiny_pair()
    student_before, teacher_before = _state(student), _state(teacher)
    distiller = Distiller(student, teacher, KDConfig(method="feature"))
    # Reading the widths with a dry run moved no BatchNorm statistic of either detector, nor their modes.
    for before, model in ((student_before, student), (teacher_before, teacher)):
        assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())
    assert student.training and not teacher.training
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        student_features, teacher_features = student.backbone(images), teacher.backbone(images)
    assert list(distiller.adapters) == list(teacher_features) and len(teacher_features) == 5
    for level, adapter in distiller.adapters.items():
        assert adapter(student_features[level]).shape == teacher_features[level].shape
    assert len(Distiller(student, teacher, KDConfig(method="logit")).adapters) == 0


def test_kd_loss_is_zero_for_a_copy_of_the_teacher_and_not_for_another_student(tiny_embedded):
    teacher, _, _ = load_preset("student")  # a trained detector, so it predicts real boxes to compare
    student = copy.deepcopy(teacher)
    distiller = Distiller(student, teacher, KDConfig(method="both", box_weight=1.0, feature_mask=True))
    images, targets = _batch(tiny_embedded)
    with distiller.attach(student), torch.no_grad():
        student(images)
        losses = distiller(student, images, targets)
        assert set(losses) == ALL_TERMS
        assert all(abs(value.item()) < 1e-6 for value in losses.values()), losses
        student.head.regression_head.bbox_reg.bias.add_(0.3)  # wider boxes everywhere
        student.head.classification_head.cls_logits.bias.add_(0.5)
        student(images)
        changed = distiller(student, images, targets)
    assert changed["kd_box"] > 1e-3 and changed["kd_logit"] > 1e-3
    assert len(distiller.history) == 2 and set(distiller.history[0]) == ALL_TERMS


def test_distiller_refuses_stale_or_unattached_outputs(tiny_embedded):
    student, teacher = _tiny_pair()
    distiller = Distiller(student, teacher, KDConfig(method="logit"))
    images, targets = _batch(tiny_embedded)
    with pytest.raises(CompressKitError, match="attach"):
        distiller(student, images, targets)
    with distiller.attach(student):
        with pytest.raises(CompressKitError, match="has not run forward"):
            distiller(student, images, targets)
    other_student = build_detector(replace(TINY_STUDENT, image_size=160))
    with distiller.attach(other_student), torch.no_grad():
        other_student.eval()(images)
        with pytest.raises(ConfigError, match="do not align"):
            distiller(other_student, images, targets)


def test_one_optimisation_step_lowers_every_kd_term(tiny_embedded):
    student, teacher = _tiny_pair()
    distiller = Distiller(student, teacher, KDConfig(method="both", box_weight=1.0))
    images, targets = _batch(tiny_embedded, size=4)
    optimizer = torch.optim.SGD([*student.parameters(), *distiller.adapters.parameters()], lr=0.01)
    student.train()
    with distiller.attach(student):
        for _ in range(2):
            student(images, targets)
            loss = sum(distiller(student, images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    before, after = distiller.history
    assert set(before) == ALL_TERMS and all(after[term] < before[term] for term in ALL_TERMS), distiller.history


def test_kd_fit_keeps_the_teacher_frozen_and_runs_the_student_once_per_step(tiny_embedded, tmp_path):
    student, teacher = _tiny_pair()
    teacher_before = _state(teacher)
    distiller = Distiller(student, teacher, KDConfig(method="both", box_weight=1.0))
    adapters_before = _state(distiller.adapters)
    forward_calls = []
    student.register_forward_hook(lambda module, inputs, output: forward_calls.append(1))
    distiller.train()
    assert not teacher.training
    with distiller.attach(student):
        result = fit(student, load_split("train", tiny_embedded), None, QUICK, tmp_path / "run",
                     extra_loss=distiller, extra_modules=distiller.adapters, max_iters_per_epoch=2, progress=False,
                     log=lambda message: None)
    assert len(forward_calls) == 2  # the hooks read the student's own forward: no second one per step
    assert len(distiller.history) == 2 and set(result["history"][0]["losses"]) >= ALL_TERMS
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher_after = teacher.state_dict()
    assert all(torch.equal(value, teacher_after[key]) for key, value in teacher_before.items())  # BN stats too
    assert any(not torch.equal(value, distiller.adapters.state_dict()[key]) for key, value in adapters_before.items())
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert set(saved["extra_modules"]) == set(distiller.adapters.state_dict())  # only the adapters, no teacher


# --------------------------------------------------------------------------------------------------- recipes
def test_every_method_starts_from_the_plain_training_run(tiny_embedded, tmp_path, monkeypatch):
    import compresskit.engine.recipes as engine_recipes
    import compresskit.engine.shipping as shipping

    assert DISTILL_RECIPE == TRAIN_RECIPES["student"]
    runs = {}

    def fake_fit(label):
        def record(model, train_set, val_loader, config, out_dir, extra_loss=None, extra_modules=None, **kwargs):
            runs[label] = {"weights": _state(model), "config": config, "kd": extra_loss is not None}
            return {"history": [], "train_seconds": 0.0, "metrics": None}
        return record

    monkeypatch.setattr(shipping, "ship_checkpoint", lambda path, *args, **kwargs: path)
    monkeypatch.setattr(shipping, "fit", fake_fit("train_preset"))
    engine_recipes.train_preset("student", tmp_path, data_dir=tiny_embedded, config=QUICK, progress=False)
    for method in ("none", "both"):
        monkeypatch.setattr(shipping, "fit", fake_fit(method))
        path = distill_student(tmp_path, method=method, train_config=QUICK, data_dir=tiny_embedded, progress=False)
        assert path.name == f"student_kd_{method}.pt"
    plain = runs["train_preset"]
    for method in ("none", "both"):
        assert runs[method]["config"] == plain["config"]
        assert all(torch.equal(value, runs[method]["weights"][key]) for key, value in plain["weights"].items())
    assert not runs["none"]["kd"] and runs["both"]["kd"]


def test_distill_student_ships_a_checkpoint_that_names_its_method(tiny_embedded, tmp_path):
    path = distill_student(tmp_path, method="logit", train_config=QUICK, data_dir=tiny_embedded,
                           max_iters_per_epoch=2, progress=False)
    assert path == tmp_path / "student_kd_logit.pt"
    shipped, label_map, meta = load_checkpoint(path)
    assert meta["method"] == "logit" and meta["kd_config"]["method"] == "logit"
    assert meta["teacher"] == "teacher" and 0 < meta["teacher_map"] <= 1
    assert [set(row) for row in meta["kd_steps"]] == [{"step", "kd_logit", "kd_ctrness"}] * 2
    assert {"kd_logit", "classification"} <= set(meta["history"][0]["losses"])
    assert label_map == LabelMap.contiguous(CATEGORIES)
    from compresskit.engine import evaluate, make_loader

    val_loader = make_loader(load_split("val", tiny_embedded, label_map=label_map), batch_size=8, train=False)
    assert meta["val_metrics"] == evaluate(shipped, val_loader, label_map, progress=False)  # of the shipped weights


def test_kd_step_log_is_thinned_evenly():
    distiller = Distiller(*_tiny_pair(), KDConfig(method="logit"))
    distiller.history = [{"kd_logit": float(step)} for step in range(1000)]
    rows = kd_step_log(distiller, limit=400)
    assert len(rows) <= 400 and rows[0]["step"] == 0 and rows[1]["step"] == rows[1]["kd_logit"] == 3


def test_distillation_recovers_a_pruned_teacher_through_prune_and_finetune(tiny_embedded, tmp_path):
    from compresskit.prune import prune_and_finetune

    teacher = build_detector(TINY_TEACHER).eval()
    source = save_checkpoint(tmp_path / "teacher.pt", teacher, TINY_TEACHER, LabelMap.contiguous(CATEGORIES),
                             meta={"val_metrics": {"map": 0.0}})
    unpruned, _, _ = load_checkpoint(source)
    path = prune_and_finetune(tmp_path / "out", train_config=QUICK, data_dir=tiny_embedded, max_iters_per_epoch=2,
                              progress=False, checkpoint=source, name="teacher_pruned_kd",
                              extra_training=distillation(unpruned, KDConfig(method="feature")))
    assert path == tmp_path / "out" / "teacher_pruned_kd.pt"
    model, _, meta = load_checkpoint(path)
    assert meta["kd_config"]["method"] == "feature" and meta["macs_after"] < meta["macs_before"]
    assert meta["method"] == "feature" and meta["teacher_val_metrics"] == {"map": 0.0}
    assert meta["prune_config"]["ratio"] == 0.5 and len(meta["kd_steps"]) == 2
    assert {"kd_feature", "classification"} <= set(meta["history"][0]["losses"])
    # Pruning narrowed the FPN, so the adapters mapped narrower student levels to the teacher's width.
    assert set(fpn_widths(model).values()) == {TINY_TEACHER.fpn_channels // 2}


# ------------------------------------------------------------------------------------------ box distillation
class _FixedDetections(torch.nn.Module):
    """A teacher that detects the same boxes in every image (and has a BatchNorm, to see it stay in eval mode)."""

    def __init__(self, boxes: list[list[float]], labels: list[int], scores: list[float]) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(1)
        self.detections = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
                           "scores": torch.tensor(scores)}
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        assert not self.training and not torch.is_grad_enabled()
        return [dict(self.detections) for _ in images]


def test_box_distiller_adds_the_teachers_confident_detections_that_no_label_covers():
    teacher = _FixedDetections(boxes=[[10, 10, 50, 50],   # on the labelled box (IoU 0.83): the label stands
                                      [60, 60, 90, 90],   # unlabelled and confident: added
                                      [0, 0, 20, 90],     # unlabelled, below the score: dropped
                                      [5, 5, 5, 30]],     # no width: dropped
                               labels=[1, 2, 3, 2], scores=[0.9, 0.8, 0.3, 0.9])
    distiller = BoxDistiller(teacher, score=0.5, overlap=0.5)
    labelled = {"boxes": torch.tensor([[12.0, 12.0, 50.0, 50.0]]), "labels": torch.tensor([1]), "image_id": 7}
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64), "image_id": 8}
    merged = distiller([torch.zeros(3, 100, 100)] * 2, [labelled, empty])
    assert merged[0]["boxes"].tolist() == [[12, 12, 50, 50], [60, 60, 90, 90]]
    assert merged[0]["labels"].tolist() == [1, 2]
    assert merged[0]["image_id"] == 7 and merged[0]["labels"].dtype == torch.int64
    assert merged[1]["boxes"].tolist() == [[10, 10, 50, 50], [60, 60, 90, 90]]  # nothing labelled: both confident
    assert labelled["boxes"].shape == (1, 4)  # the batch's own targets are left as they were
    assert distiller.history == [{"teacher_boxes_per_image": 1.5, "added_share": 0.75}]
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    none_confident = BoxDistiller(teacher, score=0.95)([torch.zeros(3, 100, 100)], [labelled])
    assert none_confident[0] is labelled


def test_box_distillation_trains_any_detector_and_keeps_the_teacher_frozen(tiny_embedded, tmp_path):
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)  # an SSDlite student with a teacher that detects one fixed box: heads that share nothing
    student = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(CATEGORIES) + 1)
    teacher = _FixedDetections(boxes=[[1, 1, 30, 30]], labels=[1], scores=[0.9])
    with pytest.raises(ConfigError, match="method 'boxes'"):
        distillation(student, KDConfig(method="both"))  # a location-by-location method needs two FCOS detectors
    extra = distillation(teacher, KDConfig(method="boxes"))(student)
    assert extra.loss is None and extra.modules is None  # nothing beside the student trains
    batches = []  # the targets each student forward was given
    student.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[1]))
    fit(student, load_split("train", tiny_embedded), None, QUICK, tmp_path / "run", max_iters_per_epoch=2,
        progress=False, log=lambda message: None, extra_targets=extra.targets)
    assert teacher.calls == len(batches) == 2  # one teacher forward per step
    record = extra.record()
    assert record["method"] == "boxes" and [row["step"] for row in record["kd_steps"]] == [0, 1]
    added = [sum(1 for target in batch for box in target["boxes"].tolist() if box == [1, 1, 30, 30])
             for batch in batches]
    assert added == [row["teacher_boxes_per_image"] * QUICK.batch_size for row in record["kd_steps"]]
    assert sum(added) > 0
