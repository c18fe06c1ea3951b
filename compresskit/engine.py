"""The one training and evaluation loop of the kit, shaped like torchvision's ``references/detection``.

``train_one_epoch`` and ``evaluate`` work on any torchvision-style detector (list of images in; losses in train
mode, list of detection dicts in eval mode). ``fit`` adds seeds, a warm-up + cosine schedule, gradient clipping,
atomic per-epoch checkpoints with resume, and runs unchanged under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU).
Techniques plug extra loss terms in through ``extra_loss`` (distillation does) instead of writing a second loop.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm.auto import tqdm

from compresskit.data.dataset import LabelMap
from compresskit.data.files import atomic_write_bytes
from compresskit.settings import seed_everything

METRIC_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large")

# extra_loss(model, images, targets) -> {name: scalar tensor}, added to the detector's own losses.
ExtraLoss = Callable[[nn.Module, list, list], dict]


@dataclass
class TrainConfig:
    """Optimisation recipe; JSON-able so it is recorded beside every checkpoint."""

    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 200
    clip_grad_norm: float = 10.0
    seed: int = 0
    workers: int = 1
    eval_every: int = 0  # epochs between evaluations on the val loader; 0 = only after the last epoch


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data_loader, device: torch.device | str,
                    epoch: int, scheduler=None, extra_loss: ExtraLoss | None = None, clip_grad_norm: float = 0.0,
                    scaler: torch.amp.GradScaler | None = None, max_iters: int | None = None,
                    progress: bool = True) -> dict[str, float]:
    """One pass over ``data_loader``; returns the mean of each loss term.

    Args:
        extra_loss: called with ``(model, images, targets)`` after the detector's forward; its terms are added.
        scaler: a GradScaler enables mixed precision (only meaningful on a GPU).
        max_iters: stop early (tests and lessons use it to keep runs short).
    """
    model.train()
    totals: dict[str, float] = {}
    steps = 0
    bar = tqdm(data_loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and is_main_process()))
    for images, targets in bar:
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device_type="cuda", enabled=scaler is not None):
            losses = model(images, targets)
            if extra_loss is not None:
                losses.update(extra_loss(model, images, targets))
            loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {steps}: {losses}; lower the "
                                     "learning rate or check the targets (`compresskit data check`)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + value.item()
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if max_iters is not None and steps >= max_iters:
            break
    return {name: total / max(steps, 1) for name, total in totals.items()}


VAL_SUBSET_IMAGES = 100  # the fixed val slice shipped checkpoints are re-checked on (the first N images)


def val_subset(dataset, images: int = VAL_SUBSET_IMAGES) -> torch.utils.data.Subset:
    """The first ``images`` items of ``dataset``: a fixed, quick evaluation slice."""
    return torch.utils.data.Subset(dataset, range(min(images, len(dataset))))


def _dataset_and_ids(data_loader) -> tuple:
    dataset = data_loader.dataset
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset.dataset, [dataset.dataset.ids[i] for i in dataset.indices]
    return dataset, list(dataset.ids)


def coco_metrics(coco_gt, detections: list[dict], image_ids: list[int], verbose: bool = False) -> dict[str, float]:
    """COCOeval bbox metrics for ``detections`` (COCO result dicts) over ``image_ids``.

    With no detections at all every metric is 0.0 (nothing was found), not COCOeval's -1 ("no ground truth").
    An area range without any ground truth stays ``None``: there is nothing to measure there.
    """
    if not detections:
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()) as log:
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(log.getvalue())
    stats = evaluator.stats[:6]
    return {name: (round(float(value), 6) if value >= 0 else None) for name, value in zip(METRIC_NAMES, stats)}


def ground_truth_from_boxes(boxes_xywh: list[list[float]], width: int = 100, height: int = 100,
                            category_id: int = 1):
    """A one-image COCO ground truth with the given boxes: for worked examples and tests of the metric."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "file_name": "example.jpg", "width": width, "height": height}],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": category_id, "bbox": list(box),
                                     "area": box[2] * box[3], "iscrowd": 0} for i, box in enumerate(boxes_xywh)],
                    "categories": [{"id": category_id, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@torch.inference_mode()
def predict(model: nn.Module, data_loader, label_map: LabelMap, device: torch.device | str = "cpu",
            progress: bool = True) -> list[dict]:
    """Run ``model`` over the loader and return COCO-format results (category ids, xywh boxes, scores)."""
    model.eval()
    results = []
    for images, targets in tqdm(data_loader, desc="evaluate", leave=False, disable=not progress):
        outputs = model([image.to(device) for image in images])
        for target, output in zip(targets, outputs):
            boxes = output["boxes"].cpu()
            boxes[:, 2:] -= boxes[:, :2]
            for box, label, score in zip(boxes.tolist(), output["labels"].tolist(), output["scores"].tolist()):
                if label in label_map.labels:  # the background slot never maps to a category
                    results.append({"image_id": int(target["image_id"]), "bbox": [round(v, 2) for v in box],
                                    "category_id": label_map.to_category_id(label), "score": round(score, 5)})
    return results


def evaluate(model: nn.Module, data_loader, label_map: LabelMap | None = None, device: torch.device | str = "cpu",
             progress: bool = True, verbose: bool = False) -> dict[str, float]:
    """COCO bbox mAP of ``model`` on ``data_loader``'s dataset: ``map``, ``map50``, ``map75``, ``map_small/
    medium/large`` (COCOeval's 0-1 values). Predicted labels are mapped back to category ids by ``label_map``
    (default: the dataset's)."""
    dataset, image_ids = _dataset_and_ids(data_loader)
    detections = predict(model, data_loader, label_map or dataset.label_map, device=device, progress=progress)
    return coco_metrics(dataset.coco, detections, image_ids, verbose=verbose)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int):
    """Linear warm-up then cosine decay to 1 % of the base rate, stepped every iteration."""
    def factor(step: int) -> float:
        if step < warmup_iters:
            return 0.001 + 0.999 * step / warmup_iters
        progress = (step - warmup_iters) / max(1, total_iters - warmup_iters)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _init_distributed() -> tuple[torch.device, bool]:
    """Join the process group when launched by torchrun; one process otherwise."""
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, dist.is_initialized()


def _average_buffers(model: nn.Module) -> None:
    # DDP keeps gradients in step, but each rank updates its BatchNorm statistics from its own shard;
    # averaging them once per epoch leaves every rank with the same model.
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world


def make_loader(dataset, batch_size: int, train: bool, workers: int = 0, seed: int = 0):
    """A DataLoader with the detection collate; under DDP each rank gets its own shard."""
    from compresskit.data.dataset import collate_fn

    sampler = None
    if dist.is_initialized() and train:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None,
                                       sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                                       generator=generator, persistent_workers=workers > 0)


def fit(model: nn.Module, train_dataset, val_loader, config: TrainConfig, out_dir: Path | str,
        extra_loss: ExtraLoss | None = None, max_iters_per_epoch: int | None = None,
        progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train ``model`` in place; checkpoint ``out_dir/last.pt`` atomically after every epoch and resume from it.

    Returns ``{"history": [...], "train_seconds": float, "metrics": last evaluation or None}``.
    """
    seed_everything(config.seed)
    device, distributed = _init_distributed()
    model.to(device)
    out_dir = Path(out_dir)
    loader = make_loader(train_dataset, config.batch_size, train=True, workers=config.workers, seed=config.seed)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:  # norms and biases are not weight-decayed (the usual detection recipe)
            (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    iters_per_epoch = min(len(loader), max_iters_per_epoch or len(loader))
    scheduler = warmup_cosine(optimizer, config.epochs * iters_per_epoch, config.warmup_iters)
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    checkpoint = out_dir / "last.pt"
    if checkpoint.exists():  # resume: weights, optimiser, schedule and progress
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        log(f"resumed from {checkpoint} after epoch {state['epoch']}")
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    metrics = None
    for epoch in range(state["epoch"], config.epochs):
        if isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler):
            loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        losses = train_one_epoch(train_model, optimizer, loader, device, epoch, scheduler=scheduler,
                                 extra_loss=extra_loss, clip_grad_norm=config.clip_grad_norm, scaler=scaler,
                                 max_iters=max_iters_per_epoch, progress=progress)
        if distributed:
            _average_buffers(model)
        state["train_seconds"] += time.perf_counter() - started
        state["epoch"] = epoch + 1
        entry = {"epoch": epoch + 1, "losses": losses, "seconds": round(state["train_seconds"], 1)}
        last = epoch + 1 == config.epochs
        if val_loader is not None and is_main_process() and (last or (config.eval_every and
                                                                      (epoch + 1) % config.eval_every == 0)):
            metrics = evaluate(model, val_loader, device=device, progress=progress)
            entry["metrics"] = metrics
        state["history"].append(entry)
        log(f"epoch {epoch + 1}/{config.epochs} loss {sum(losses.values()):.4f} "
            f"time {state['train_seconds']:.0f}s" + (f" mAP {metrics['map']:.4f}" if "metrics" in entry else ""))
        if is_main_process():
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "state": state, "config": asdict(config)}, buffer)
            atomic_write_bytes(checkpoint, buffer.getvalue())
    return {"history": state["history"], "train_seconds": state["train_seconds"], "metrics": metrics}
