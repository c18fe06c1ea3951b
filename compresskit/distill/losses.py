"""Distillation losses: the article's softmax loss as written, its corrected forms, and a box loss.

The article distils with ``-mean(sum(softmax(teacher / T) * log(softmax(student / T))))``. Two things are off
for a detector: without the ``T**2`` factor the gradients shrink about ``1 / T**2`` as the temperature rises (so
a higher temperature silently means a smaller learning rate), and a softmax over classes assumes exactly one class
per location, while FCOS scores every class with its own sigmoid (focal loss), background being "all classes
off". :func:`sigmoid_kd_loss` is the form that fits: a binary KL per class, times ``T**2``.

Every loss here computes in float32, so fp16 inputs under autocast do not lose the small probabilities.
Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from compresskit.errors import ConfigError


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> None:
    if student.shape != teacher.shape:
        raise ConfigError(f"student and teacher outputs must have the same shape, got {tuple(student.shape)} and "
                          f"{tuple(teacher.shape)}; distil between detectors with the same classes and strides")
    if not temperature > 0:
        raise ConfigError(f"the temperature must be positive, got {temperature}")


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (one per row), weighted by ``weight`` (same length) when given."""
    if weight is None:
        return values.mean()
    weight = weight.detach().float().reshape(-1)
    if weight.numel() != values.numel():
        raise ConfigError(f"the weight must hold one value per location ({values.numel()}), got {weight.numel()}")
    return (weight * values).sum() / weight.sum().clamp_min(1e-12)


def article_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The article's loss, term for term: ``-mean(sum(softmax(t / T) * log(softmax(s / T))))``.

    A cross-entropy between softened softmax distributions, summed over the last (class) dimension and averaged
    over everything else; no ``T**2`` factor. Kept to show what changes in the corrected forms.

    Args:
        student_logits: ``(..., classes)``.
        teacher_logits: same shape.
        temperature: softening temperature ``T``.

    Returns:
        A float32 scalar.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    teacher_probs = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    # log_softmax is log(softmax(...)) without the underflow to log(0) for very negative logits.
    student_log_probs = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(teacher_probs * student_log_probs).sum(dim=-1).mean()


def softmax_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD for softmax classifiers: ``T**2 * KL(teacher || student)`` at temperature ``T``.

    Args:
        student_logits: ``(..., classes)``; every leading position is one distribution.
        teacher_logits: same shape.
        temperature: softening temperature ``T``.

    Returns:
        A float32 scalar: the KL summed over classes, averaged over positions ("batchmean"), times ``T**2``.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    classes = student_logits.shape[-1]
    student_log_probs = torch.log_softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    teacher_log_probs = torch.log_softmax(teacher_logits.float().reshape(-1, classes) / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def sigmoid_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """KD for per-class sigmoid classifiers (FCOS, RetinaNet): a binary KL per class at temperature ``T``.

    For each location and class, ``p = sigmoid(teacher / T)`` and ``q = sigmoid(student / T)`` are "this class is
    present" probabilities; the loss is ``KL(Bernoulli(p) || Bernoulli(q))``, summed over classes, times ``T**2``,
    then averaged over locations (weighted by ``weight`` when given).

    Args:
        student_logits: ``(..., classes)``; every leading position is one location.
        teacher_logits: same shape.
        temperature: softening temperature ``T``.
        weight: one non-negative value per location (the leading dimensions), e.g. the teacher's foreground
            probability; None weighs every location alike.

    Returns:
        A float32 scalar; exactly 0 when the two logits are equal.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    classes = student_logits.shape[-1]
    student_scaled = student_logits.float().reshape(-1, classes) / temperature
    teacher_scaled = teacher_logits.float().reshape(-1, classes) / temperature
    # log p and log(1 - p) through logsigmoid: exact for large |logits|, where sigmoid rounds to 0 or 1.
    teacher_on, teacher_off = F.logsigmoid(teacher_scaled), F.logsigmoid(-teacher_scaled)
    student_on, student_off = F.logsigmoid(student_scaled), F.logsigmoid(-student_scaled)
    kl = teacher_on.exp() * (teacher_on - student_on) + teacher_off.exp() * (teacher_off - student_off)
    per_location = kl.sum(dim=-1) * temperature ** 2
    return _weighted_mean(per_location, weight)


def giou_box_loss(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Generalized-IoU loss between each student box and the teacher's box at the same location.

    Args:
        student_boxes: ``(locations, 4)`` as ``x1, y1, x2, y2``.
        teacher_boxes: same shape.
        weight: one non-negative value per location; None weighs every box alike.

    Returns:
        A float32 scalar: the weighted mean of ``1 - GIoU`` (0 for identical, non-empty boxes).
    """
    if student_boxes.shape != teacher_boxes.shape or student_boxes.shape[-1:] != (4,):
        raise ConfigError(f"boxes must be two (locations, 4) tensors of the same shape, got "
                          f"{tuple(student_boxes.shape)} and {tuple(teacher_boxes.shape)}")
    per_box = generalized_box_iou_loss(student_boxes.float().reshape(-1, 4), teacher_boxes.float().reshape(-1, 4),
                                       reduction="none")
    return _weighted_mean(per_box, weight)


def gradient_scale(temperatures: list[float], with_t_squared: bool, loss: str = "softmax", classes: int = 10,
                   rows: int = 256, seed: int = 0) -> list[dict]:
    """Size of the KD gradient at each temperature, measured with autograd on one fixed random logit pair.

    Without the ``T**2`` factor the gradient with respect to the student's logits shrinks about ``1 / T**2``
    (at high ``T`` the softened probabilities differ by about ``(s - t) / T``, and the chain rule through ``s / T``
    divides once more); with it the size stays about flat, which is why Hinton et al. multiply by ``T**2``.

    Args:
        temperatures: the temperatures to measure.
        with_t_squared: keep the loss's ``T**2`` factor (False divides it back out).
        loss: ``"softmax"`` (:func:`softmax_kd_loss`) or ``"sigmoid"`` (:func:`sigmoid_kd_loss`).
        classes: logits per row.
        rows: rows in the random pair.
        seed: seed of the random pair (the same pair for every temperature).

    Returns:
        One ``{"temperature", "grad_norm"}`` row per temperature, ``grad_norm`` being the L2 norm of the gradient
        of the loss with respect to the student's logits.
    """
    losses = {"softmax": softmax_kd_loss, "sigmoid": sigmoid_kd_loss}
    if loss not in losses:
        raise ConfigError(f"loss must be one of {sorted(losses)}, got {loss!r}")
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, classes, generator=generator)
    teacher = torch.randn(rows, classes, generator=generator)
    table = []
    for temperature in temperatures:
        logits = student.clone().requires_grad_(True)
        value = losses[loss](logits, teacher, temperature)
        if not with_t_squared:
            value = value / temperature ** 2
        (gradient,) = torch.autograd.grad(value, logits)
        table.append({"temperature": float(temperature), "grad_norm": float(gradient.norm())})
    return table


def soft_targets_summary(class_logits: torch.Tensor, temperature: float = 2.0,
                         background_below: float = 0.05) -> dict:
    """What each KD form asks a student to match, over a detector's class logits ``(..., classes)``.

    A location is background when the teacher's highest per-class probability (sigmoid, T = 1) is below
    ``background_below``. There the sigmoid form's targets say "no class" (all small), while a softmax over classes
    must sum to one and so names some class with confidence: the article's loss teaches that noise, on the locations
    that make up almost all of a detector's output.

    Returns:
        ``locations``; ``background_share`` (fraction of locations that are background); on background
        locations, the mean highest target probability under the softmax and under the sigmoid form, and the mean
        summed sigmoid target (the softmax's always sums to 1), all at ``temperature``.
    """
    logits = class_logits.detach().float().reshape(-1, class_logits.shape[-1])
    background = logits.sigmoid().amax(dim=-1) < background_below
    softened = logits[background] / temperature
    return {"locations": int(logits.shape[0]), "background_share": float(background.float().mean()),
            "softmax_top_on_background": float(softened.softmax(dim=-1).amax(dim=-1).mean()),
            "sigmoid_top_on_background": float(softened.sigmoid().amax(dim=-1).mean()),
            "sigmoid_mass_on_background": float(softened.sigmoid().sum(dim=-1).mean())}
