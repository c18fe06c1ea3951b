"""The one training loop of the kit, shaped like torchvision's ``references/detection``.

``train_one_epoch`` works on any torchvision-style detector (list of images and targets in, dict of losses out in
train mode). ``fit`` adds seeds, a warm-up + cosine schedule, gradient clipping, atomic per-epoch checkpoints with
resume, and runs unchanged under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU). Techniques plug extra loss terms in
through ``extra_loss`` and extra trainable modules (distillation adapters) through ``extra_modules`` instead of
writing a second loop. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from compresskit.data.files import atomic_write_bytes
from compresskit.engine.evaluation import evaluate
from compresskit.errors import CheckpointError, ConfigError
from compresskit.settings import seed_everything

# extra_loss(model, images, targets) -> {name: scalar tensor}, added to the detector's own losses.
ExtraLoss = Callable[[nn.Module, list, list], dict]
# extra_targets(images, targets) -> targets, what the detector trains on this step (e.g. a teacher's boxes added).
ExtraTargets = Callable[[list, list], list]


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


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it: the process that evaluates and writes files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _epoch_bar(data_loader, epoch: int, progress: bool) -> tqdm:
    # The bar opens the loader's iterator when it is built and again when iterated (tqdm.auto's asyncio variant):
    # a persistent-worker loader then draws and discards a shuffle per epoch, which _replay_loading must repeat.
    return tqdm(data_loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and is_main_process()))


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data_loader, device: torch.device | str,
                    epoch: int, scheduler=None, extra_loss: ExtraLoss | None = None, clip_grad_norm: float = 0.0,
                    scaler: torch.amp.GradScaler | None = None, max_iters: int | None = None,
                    progress: bool = True, extra_targets: ExtraTargets | None = None) -> dict[str, float]:
    """One pass over ``data_loader``; returns the mean of each loss term.

    Args:
        extra_loss: called with ``(model, images, targets)`` after the detector's forward; its terms are added.
        scaler: a GradScaler enables mixed precision (only meaningful on a GPU).
        max_iters: stop early (tests and lessons use it to keep runs short).
        extra_targets: called with ``(images, targets)`` before the detector's forward; the detector and
            ``extra_loss`` train on what it returns.
    """
    model.train()
    totals: dict[str, float] = {}
    steps = 0
    bar = _epoch_bar(data_loader, epoch, progress)
    for images, targets in bar:
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        if extra_targets is not None:
            targets = extra_targets(images, targets)
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
                                       generator=generator, persistent_workers=workers > 0,
                                       worker_init_fn=_quiet_abandoned_transfers if workers > 0 else None)


def _quiet_abandoned_transfers(worker_id: int) -> None:
    """In a loader worker: no traceback when the main process stops half-way through taking a batch.

    A batch reaches the main process through a file descriptor that multiprocessing's resource-sharer thread of the
    worker hands over; on Ctrl-C the main process may hang up mid-handover, and that thread reports the
    ConnectionResetError (or EOFError) through ``sys.excepthook`` under the command's one-line message. Nothing is
    lost: the batch was never trained on. Every other error, and every other thread's, is still reported.
    """
    import sys
    import threading

    report = sys.excepthook

    def excepthook(kind, value, traceback) -> None:
        # The hang-up shows as a reset connection or, when it comes before the request was read, as an end of file.
        hung_up = issubclass(kind, (ConnectionError, EOFError)) or (
            issubclass(kind, OSError) and "end of file" in str(value))
        if not (hung_up and "_serve" in threading.current_thread().name):
            report(kind, value, traceback)
    sys.excepthook = excepthook


def _average_gradients_of(module: nn.Module) -> list:
    """Under DDP, average ``module``'s gradients across ranks as each one is accumulated.

    Extra modules live outside the DDP-wrapped detector, so DDP does not synchronise them. They get their own
    process group: their all-reduces then never interleave with the ones DDP issues for the detector.
    """
    group, world = dist.new_group(), dist.get_world_size()

    def average(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad, group=group)
        param.grad /= world

    return [param.register_post_accumulate_grad_hook(average) for param in module.parameters()
            if param.requires_grad]


def _optimizer(modules: list[nn.Module], config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for param in module.parameters():
            if param.requires_grad and id(param) not in seen:  # a parameter shared by two modules goes in once
                seen.add(id(param))
                # Norms and biases are not weight-decayed (the usual detection recipe).
                (no_decay if param.ndim <= 1 else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def _is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError.

    (Where the operating system overcommits memory, a CPU run may be killed instead, with nothing to catch.)
    """
    message = str(error)
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in message
            or "can't allocate memory" in message)


def _random_state(loader) -> dict:
    """Every random stream the next epoch draws from in this process: the loader's shuffle generator and the global
    Python, NumPy and torch generators (augmentation runs on torch's when the loader has no workers)."""
    numpy_state = np.random.get_state()
    return {"loader": loader.generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            # As plain values: a checkpoint loaded with weights_only cannot hold a NumPy array.
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]]}


def _restore_random_state(saved: dict, loader) -> None:
    loader.generator.set_state(saved["loader"].cpu())
    torch.set_rng_state(saved["torch"].cpu())
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in saved["cuda"]])
    version, *rest = saved["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, key, *rest = saved["numpy"]
    np.random.set_state((name, key.cpu().numpy().astype(np.uint32), *rest))


def _replay_loading(loader, epochs: int, max_iters: int | None) -> None:
    """Draw ``epochs`` epochs of batches from ``loader`` as training did, without training on them.

    A loader's worker processes persist across epochs and augment with their own random generators, which no
    checkpoint can hold; drawing the finished epochs again leaves them where the interrupted run had them, so a
    resumed run sees the same augmented batches as an uninterrupted one.
    """
    for epoch in range(epochs):
        if isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for step, _ in enumerate(_epoch_bar(loader, epoch, progress=False), start=1):
            if max_iters is not None and step >= max_iters:
                break


def fit(model: nn.Module, train_dataset, val_loader, config: TrainConfig, out_dir: Path | str,
        extra_loss: ExtraLoss | None = None, max_iters_per_epoch: int | None = None,
        progress: bool = True, log: Callable[[str], None] = print,
        extra_modules: nn.Module | None = None, extra_targets: ExtraTargets | None = None) -> dict:
    """Train ``model`` in place; checkpoint ``out_dir/last.pt`` atomically after every epoch and resume from it.

    Args:
        model: a torchvision-style detector (moved to the device).
        train_dataset: a detection dataset; :func:`make_loader` batches (and, under DDP, shards) it.
        val_loader: evaluated every ``config.eval_every`` epochs and after the last one; None skips evaluation.
        config: the optimisation recipe.
        out_dir: where ``last.pt`` (weights, optimiser, schedule, progress) is written and resumed from.
        extra_loss: ``(model, images, targets) -> {name: loss}``, added to the detector's losses every step.
        max_iters_per_epoch: cap on steps per epoch (tests and lessons keep runs short with it).
        log: receives one line per epoch.
        extra_modules: trainable modules outside the detector that ``extra_loss`` uses (e.g. distillation
            adapters): optimised with the detector's parameters (same weight-decay split), moved to the device,
            in train mode while training, saved in ``last.pt`` and restored on resume.
        extra_targets: ``(images, targets) -> targets``, what each step trains on instead of the batch's own
            targets (e.g. box distillation adds a teacher's detections).

    Returns:
        ``{"history": [...], "train_seconds": float, "metrics": last evaluation or None, "resumed_after": the
        epochs after which an interrupted run was resumed (empty for a run never interrupted)}``.

    Raises:
        ConfigError: a training step ran out of memory (the message names the batch size and a smaller one).
        KeyboardInterrupt: its message says after which epoch a rerun resumes.

    A run that resumes ends with the same weights as one never interrupted (bit for bit on the CPU): ``last.pt``
    also holds the run's random streams, and a loader with workers draws the finished epochs' batches again.
    """
    seed_everything(config.seed)
    device, distributed = _init_distributed()
    trained = [model.to(device)] + ([extra_modules.to(device)] if extra_modules is not None else [])
    out_dir = Path(out_dir)
    loader = make_loader(train_dataset, config.batch_size, train=True, workers=config.workers, seed=config.seed)
    optimizer = _optimizer(trained, config)
    iters_per_epoch = min(len(loader), max_iters_per_epoch or len(loader))
    total_iters = config.epochs * iters_per_epoch
    # A recipe's warm-up is sized for the embedded dataset; on a small dataset of your own it would outlast the run.
    scheduler = warmup_cosine(optimizer, total_iters, min(config.warmup_iters, total_iters // 5))
    state = {"epoch": 0, "history": [], "train_seconds": 0.0}
    checkpoint = out_dir / "last.pt"
    if checkpoint.exists():  # resume: weights, optimiser, schedule and progress
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        if (saved.get("extra_modules") is None) != (extra_modules is None):
            raise CheckpointError(f"{checkpoint} was written {'without' if extra_modules is not None else 'with'} "
                                  "extra modules, so this run cannot resume it; pass the same extra_modules as the "
                                  "run that wrote it, or train into a new out_dir")
        model.load_state_dict(saved["model"])
        if extra_modules is not None:
            extra_modules.load_state_dict(saved["extra_modules"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if "random" in saved:  # checkpoints written before it was saved resume with a fresh data order
            if loader.num_workers > 0:
                _replay_loading(loader, state["epoch"], max_iters_per_epoch)
            _restore_random_state(saved["random"], loader)
        log(f"resumed from {checkpoint} after epoch {state['epoch']}")
        state["resumed_after"] = [*state.get("resumed_after", []), state["epoch"]]  # the record says it resumed
    # A run killed while writing its checkpoint leaves the unfinished temporary file behind; last.pt is intact.
    for unfinished in out_dir.glob(f".{checkpoint.name}.*.tmp") if is_main_process() else ():
        unfinished.unlink(missing_ok=True)
    checkpointed = state["epoch"]
    if state["epoch"] < config.epochs:
        log(f"training {config.epochs} epochs x {iters_per_epoch} steps = {total_iters} steps at batch "
            f"{config.batch_size} ({len(train_dataset)} train images)"
            + (f", from epoch {state['epoch'] + 1}" if state["epoch"] else ""))
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    gradient_hooks = _average_gradients_of(extra_modules) if distributed and extra_modules is not None else []
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    metrics = None
    try:
        for epoch in range(state["epoch"], config.epochs):
            if isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler):
                loader.sampler.set_epoch(epoch)
            if extra_modules is not None:
                extra_modules.train()  # train_one_epoch switches the detector itself
            started = time.perf_counter()
            try:
                losses = train_one_epoch(train_model, optimizer, loader, device, epoch, scheduler=scheduler,
                                         extra_loss=extra_loss, clip_grad_norm=config.clip_grad_norm,
                                         scaler=scaler, max_iters=max_iters_per_epoch, progress=progress,
                                         extra_targets=extra_targets)
            except (MemoryError, RuntimeError) as error:
                if not _is_out_of_memory(error):
                    raise
                cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
                raise ConfigError(f"batch size {config.batch_size} does not fit in {device.type} memory ({cause}); "
                                  f"train with a smaller TrainConfig.batch_size, e.g. "
                                  f"{max(1, config.batch_size // 2)}"
                                  + (f"; epochs 1-{checkpointed} are kept in {checkpoint}" if checkpointed else "")
                                  ) from error
            if distributed:
                for module in trained:
                    _average_buffers(module)
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
                            "scheduler": scheduler.state_dict(), "state": state, "config": asdict(config),
                            "extra_modules": extra_modules.state_dict() if extra_modules is not None else None,
                            "random": _random_state(loader)},
                           buffer)
                atomic_write_bytes(checkpoint, buffer.getvalue())
            checkpointed = state["epoch"]
    except KeyboardInterrupt:
        # One line for the command line to print instead of a traceback (see compresskit.cli.main).
        raise KeyboardInterrupt(f"rerun the same command to resume after epoch {checkpointed} of {config.epochs} "
                                f"({checkpoint})" if checkpointed else
                                "no epoch had finished, so a rerun of the same command starts again") from None
    finally:
        for hook in gradient_hooks:
            hook.remove()
    if extra_modules is not None:
        extra_modules.train(model.training)  # leave them in the detector's mode, as they were trained with it
    return {"history": state["history"], "train_seconds": state["train_seconds"], "metrics": metrics,
            "resumed_after": state.get("resumed_after", [])}
