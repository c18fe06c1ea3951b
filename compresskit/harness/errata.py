"""The article's four snippets, run on today's libraries: what each one does and what to do instead.

:func:`run_errata` executes every snippet on the detector it is given and captures the error or warning text as
it happens; the combined study keeps that text in its baseline record. The measured effect of each fix is read
from results records, never typed in: :func:`~compresskit.harness.summary.errata_rows` joins the captured text
with a results document (the lesson's own run, or the reference written by ``compresskit reproduce``).
Introduced in ``06_combined_pipeline.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn


@dataclass(frozen=True)
class Snippet:
    """One of the article's snippets: its code, the fix, and the record pairs (candidate, baseline) whose
    comparison measures the fix; the first pair present in a results document is used."""

    key: str
    code: str
    instead: str
    evidence: tuple[tuple[str, str], ...]
    effect: str  # which comparison the evidence shows: "prune", "int8", "kd" or "backbone"


SNIPPETS: tuple[Snippet, ...] = (
    Snippet("prune", 'prune.l1_unstructured(model, name="weight", amount=0.5)',
            "prune channels with torch-pruning's dependency graph (compresskit.prune.prune_structured_), then "
            "fine-tune (with distillation)",
            (("combined/teacher/prune-kd/eager", "combined/teacher/eager"),
             ("pruning/teacher/structured-50/eager", "pruning/teacher/eager")), "prune"),
    Snippet("quantize_dynamic", "quantize_dynamic(model, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)",
            "static int8: calibrate activations and quantize the convs (ONNX Runtime QDQ, or torchao PT2E)",
            (("combined/teacher/int8", "combined/teacher/ort-fp32"),
             ("quantization/teacher/ort-int8", "quantization/teacher/ort-fp32")), "int8"),
    Snippet("kd_loss", "-sum(softmax(t / T) * log_softmax(s / T)), no T**2",
            "per-class sigmoid KD times T**2 for a sigmoid detector (compresskit.distill.sigmoid_kd_loss), plus "
            "feature distillation",
            (("combined/student/kd", "combined/student/small"),
             ("distill/student-both/eager", "distill/student-none/eager")), "kd"),
    Snippet("pretrained", "torchvision.models.mobilenet_v2(pretrained=True)",
            "the weights= API: mobilenet_v2(weights=MobileNet_V2_Weights.DEFAULT), its transforms and metadata",
            (), "backbone"),
)


def _kd_loss_on_teacher(detector: nn.Module, images: Sequence[Any]) -> str:
    """The article's loss of the teacher against itself, where a distillation loss should be zero, beside the
    sigmoid form, on real class logits; and what the softmax asks of background locations."""
    import torch

    from compresskit.distill import article_kd_loss, sigmoid_kd_loss, soft_targets_summary
    from compresskit.models.core import ExportableCore

    with torch.no_grad():
        batch, _ = detector.transform(list(images))
        logits = ExportableCore(detector)(batch.tensors)[0]
    article = article_kd_loss(logits, logits, temperature=2.0).item()
    sigmoid = sigmoid_kd_loss(logits, logits, temperature=2.0).item()
    summary = soft_targets_summary(logits, temperature=2.0)
    return (f"no error; with the teacher as its own student (a perfect match) the loss is {article:.3f}, not 0 "
            f"(sigmoid KD: {sigmoid:.3f}); on the {summary['background_share']:.0%} background locations its "
            f"softmax targets name a class at {summary['softmax_top_on_background']:.2f} (sigmoid: "
            f"{summary['sigmoid_top_on_background']:.2f}); without T**2 its gradients shrink like 1/T**2")


def run_errata(detector: nn.Module, images: Sequence[Any]) -> dict[str, str]:
    """Run the four snippets on ``detector`` (a copy; it is never changed) and ``images`` (a few val images, for
    the loss) and return what each did, as ``{snippet key: text}``, captured while it ran."""
    from compresskit.backbones import article_pretrained_call
    from compresskit.prune.unstructured import whole_model_l1_call
    from compresskit.quantize.dynamic import article_dynamic_quant

    dynamic = article_dynamic_quant(detector)
    convs = f"Conv2d before/after: {dynamic.before.get('Conv2d', 0)}/{dynamic.after.get('Conv2d', 0)} float"
    changed = f"{len(dynamic.changed)} modules changed"
    return {
        "prune": whole_model_l1_call(detector),
        "quantize_dynamic": "; ".join([*dynamic.warnings, changed, convs]),
        "kd_loss": _kd_loss_on_teacher(detector, images),
        "pretrained": article_pretrained_call().replace("\n", " "),
    }
