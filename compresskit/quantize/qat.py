"""Quantization-aware training of a detector's core with torchao PT2E, through the engine's one training loop.

``prepare_qat_core`` gives a fake-quant copy of the core (backbone + head). :class:`QatDetector` puts it back
into the detector's own pipeline: the detector's transform, anchor generator and loss (``compute_loss``) around
the fake-quant core, so ``engine.fit`` trains it like any detector. After the fine-tune, ``convert_pt2e`` writes
the int8 graph and it is lowered exactly as post-training quantization is (:func:`~compresskit.quantize.pt2e.
lower_converted`). Introduced in ``03_quantization.ipynb``.

Two choices, and why:

* **One image per call.** The core is exported at batch 1, the shape the int8 core runs at, so the trained graph
  converts and lowers without a re-export. A training step runs its images one by one and sums their losses.
* **BatchNorm frozen.** With one image per call, batch statistics would be one image's; and a QAT fine-tune
  starts from a trained model whose running statistics are already right. The trunk's BatchNorms use them
  (torchao's ``move_exported_model_to_eval``) while the weights and the fake-quant ranges train.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compresskit.engine import TrainConfig, fit
from compresskit.errors import ConfigError
from compresskit.models.core import EndToEndDetector
from compresskit.quantize.pt2e import Pt2eConfig, Pt2eCore, lower_converted, needs_reduce_range, prepare_qat_core


@dataclass
class QatConfig:
    """A short QAT fine-tune (JSON-able): the engine's ``TrainConfig`` fields that matter, plus the quantizer's.

    Attributes:
        epochs, batch_size, lr, warmup_iters, seed: as in ``TrainConfig`` (a small learning rate: the float model
            is already trained, QAT only adapts it to int8 rounding).
        max_iters_per_epoch: cap the steps per epoch (None: the whole train split).
        reduce_range: 7-bit activations; None decides from the CPU (see ``needs_reduce_range``).
        compile: lower the converted graph with ``torch.compile`` into int8 kernels.
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-4
    warmup_iters: int = 10
    seed: int = 0
    max_iters_per_epoch: int | None = None
    reduce_range: bool | None = None
    compile: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.max_iters_per_epoch is not None and self.max_iters_per_epoch < 1:
            raise ConfigError(f"max_iters_per_epoch must be None or at least 1, got {self.max_iters_per_epoch!r}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=0.0,
                           warmup_iters=self.warmup_iters, seed=self.seed, eval_every=0)


def _loss_takes_levels(detector: nn.Module) -> bool:
    """FCOS matches targets to locations level by level, so its loss also takes the anchor count of each level;
    RetinaNet matches them to the flat anchor list by IoU. Any other detector: one message, before QAT starts."""
    from torchvision.models.detection import FCOS, RetinaNet

    if not isinstance(detector, (FCOS, RetinaNet)):
        raise ConfigError(f"QAT fine-tunes FCOS and RetinaNet detectors; {type(detector).__name__} computes its "
                          "loss another way (use post-training int8 for it)")
    return isinstance(detector, FCOS)


def detection_loss(detector: nn.Module, targets: list[dict], head_outputs: dict, anchors: list[torch.Tensor],
                   anchors_per_level: list[int]) -> dict:
    """``detector``'s own loss on head outputs computed outside it (the fake-quant core's)."""
    if _loss_takes_levels(detector):
        return detector.compute_loss(targets, head_outputs, anchors, anchors_per_level)
    return detector.compute_loss(targets, head_outputs, anchors)


class QatDetector(EndToEndDetector):
    """``detector``'s transform, anchors, loss and post-processing around a fake-quant core (see module doc).

    Training mode returns the detector's loss dict (what ``engine.fit`` expects); eval mode returns detections.
    Only the fake-quant core holds parameters: the float detector is kept outside the module tree, so neither
    the optimiser nor a checkpoint sees its weights.
    """

    def __init__(self, detector: nn.Module, qat_core: torch.fx.GraphModule, input_size: int) -> None:
        super().__init__(detector, core=self.run_core)
        del self.detector  # registered by EndToEndDetector; kept as a plain attribute instead (see class doc)
        object.__setattr__(self, "detector", detector)
        self.qat_core = qat_core
        self.input_size = input_size
        modes = {module: module.training for module in detector.modules()}
        detector.eval()  # probing the feature sizes must not move the float detector's BatchNorm statistics
        self.feature_shapes(input_size, input_size)
        for module, training in modes.items():
            module.training = training

    def train(self, mode: bool = True) -> "QatDetector":
        from torchao.quantization.pt2e import move_exported_model_to_eval

        # An exported graph refuses .train()/.eval(); its BatchNorms stay in eval mode on purpose (module doc).
        self.training = mode
        move_exported_model_to_eval(self.qat_core)
        return self

    def _core_outputs(self, batch: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        height, width = batch.shape[-2:]
        if height > self.input_size or width > self.input_size:
            raise ConfigError(f"this QAT core was exported for inputs up to {self.input_size}x{self.input_size}, "
                              f"got {height}x{width}")
        # Pad bottom/right, as torchvision's batching does, to the one exported shape.
        padded = F.pad(batch, (0, self.input_size - width, 0, self.input_size - height))
        return [self.qat_core(image.unsqueeze(0)) for image in padded]

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if not self.training:
            return super().forward(images)
        detector = self.detector
        image_list, targets = detector.transform(images, targets)
        outputs = self._core_outputs(image_list.tensors)
        head_outputs = {name: torch.cat(parts, dim=0) for name, parts in zip(self.output_names, zip(*outputs))}
        shapes = self.feature_shapes(self.input_size, self.input_size)
        empty_maps = [torch.empty(1, 0, h, w, dtype=image_list.tensors.dtype) for h, w in shapes]
        anchors = detector.anchor_generator(image_list, empty_maps)
        anchors = [a.to(image_list.tensors.device) for a in anchors]
        return detection_loss(detector, targets, head_outputs, anchors, [h * w for h, w in shapes])

    def run_core(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The fake-quant core on a batch of any size up to the exported image size (eval-mode detections)."""
        return tuple(torch.cat(parts, dim=0) for parts in zip(*self._core_outputs(batch)))


@dataclass
class QatResult:
    """What :func:`qat_finetune` returns: the int8 core (a ``Pt2eCore``), the fine-tune's history and time."""

    core: Pt2eCore
    config: QatConfig
    history: list[dict]
    train_seconds: float

    def as_dict(self) -> dict:
        return {"qat_config": dataclasses.asdict(self.config), "history": self.history,
                "train_seconds": round(self.train_seconds, 1), "pt2e": self.core.summary,
                "reduce_range": self.core.config.reduce_range}


def qat_finetune(detector: nn.Module, train_dataset, out_dir: Path | str, config: QatConfig | None = None,
                 progress: bool = True) -> QatResult:
    """Fine-tune a fake-quant copy of ``detector``'s core with ``engine.fit``, then convert and lower it to int8.

    Args:
        detector: a trained float torchvision FCOS or RetinaNet; untouched (its core is copied).
        train_dataset: the **train** split, with its training augmentation.
        out_dir: the fit's run folder (resumable checkpoint per epoch, like every kit training run).
        config: see :class:`QatConfig`.

    Returns:
        A :class:`QatResult`; evaluate ``EndToEndDetector(detector, result.core)`` like a PTQ core.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    config = config or QatConfig()
    reduce_range = needs_reduce_range() if config.reduce_range is None else config.reduce_range
    pt2e_config = Pt2eConfig(reduce_range=reduce_range, compile=config.compile)
    _loss_takes_levels(detector)  # a detector QAT cannot train stops here, before the export
    # The largest batch the detector's transform can produce: its max size, padded to the stride it pads to.
    divisor = detector.transform.size_divisible
    input_size = math.ceil(detector.transform.max_size / divisor) * divisor
    example = torch.zeros(1, 3, input_size, input_size)
    qat_core = prepare_qat_core(detector, example, pt2e_config)
    model = QatDetector(detector, qat_core, input_size)
    result = fit(model, train_dataset, None, config.train_config(), out_dir,
                 max_iters_per_epoch=config.max_iters_per_epoch, progress=progress)
    model.train(False)
    converted = convert_pt2e(model.qat_core)
    core = lower_converted(converted, example, pt2e_config, model.output_names)
    return QatResult(core=core, config=config, history=result["history"], train_seconds=result["train_seconds"])
