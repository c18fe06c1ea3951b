"""BatchNorm in a detector's shared head during a fine-tune: normalise as the deployed model will.

The FCOS head is one set of convs applied to every FPN level. A BatchNorm2d head (the int8-friendly head of
``compresskit.quantize.deploy_head``) folds into its convs at export with one set of statistics for all levels, so
a fine-tune must not let train-mode BatchNorm normalise each level by its own batch statistics.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

from torch import nn

from compresskit.errors import ConfigError


def _head_batch_norms(detector: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in detector.head.modules() if isinstance(module, nn.BatchNorm2d)]


def _use_running_statistics(module: nn.BatchNorm2d, args: tuple) -> None:
    module.training = False  # read by BatchNorm's forward: normalise with the stored statistics, update none


@contextlib.contextmanager
def frozen_head_statistics(detector: nn.Module) -> Iterator[nn.Module]:
    """While active, the head's BatchNorm2d layers normalise with their running statistics even in train mode.

    Their affine weight and bias still train. Why: a train-mode BatchNorm normalises each FPN level with that
    level's batch statistics, but the deployed (folded) head uses one set of statistics for all five levels, and
    the levels differ (measured on the converted teacher: per-level means 0.2 to 1.9 standard deviations off the
    shared ones). Fine-tuned in train mode the teacher reached 0.48 mAP; with frozen statistics 0.83, the GroupNorm
    teacher's own 0.83 (4 epochs of :data:`DEPLOY_HEAD_RECIPE` on an H100, full val split). Frozen, the fine-tune
    trains exactly the function that is exported.

    Args:
        detector: an FCOS detector whose head holds BatchNorm2d layers (changed only while the context is open).

    Yields:
        ``detector``.
    """
    norms = _head_batch_norms(detector)
    if not norms:
        raise ConfigError("the detector's head has no BatchNorm2d layers; convert it with batchnorm_head first")
    # fit() switches the whole model to train mode every epoch, so the flag is reset just before each forward.
    handles = [norm.register_forward_pre_hook(_use_running_statistics) for norm in norms]
    try:
        yield detector
    finally:
        for handle in handles:
            handle.remove()



def deployed_head_statistics(detector: nn.Module) -> ContextManager[nn.Module]:
    """:func:`frozen_head_statistics` for a detector whose head holds BatchNorm2d layers; nothing for any other.

    Every recipe that fine-tunes a detector it did not build (pruning, distillation) wraps its ``fit`` in this, so
    a BatchNorm head keeps training the function that is exported, whichever recipe trains it.
    """
    head = getattr(detector, "head", None)
    if head is None or not _head_batch_norms(detector):
        return contextlib.nullcontext(detector)
    return frozen_head_statistics(detector)
