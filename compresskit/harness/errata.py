"""The article's four snippets, run on today's libraries: what each one does, what to do instead, and the measured
effect of doing it right (read from results records, never typed in).

:func:`run_errata` executes every snippet on the detector it is given and captures the error or warning text as
it happens; :func:`errata_rows` joins that with the records of a results document (the lesson's own run, or the
reference written by ``compresskit reproduce``). Introduced in ``06_combined_pipeline.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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


def _effect(kind: str, record: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    from compresskit.report import compare

    if record.get("baseline") == baseline["id"]:
        ratios = compare(record, baseline)
    else:  # two records of one study compared on what needs no pairing (the timings were paired elsewhere)
        ratios = {"size_ratio": baseline["size_bytes"] / record["size_bytes"],
                  "macs_ratio": baseline["macs"] / record["macs"], "latency_speedup": None,
                  "map_drop_points": None if None in (record.get("map"), baseline.get("map"))
                  else 100 * (baseline["map"] - record["map"])}
    speed = ratios["latency_speedup"]
    drop = ratios["map_drop_points"]
    parts = []
    if kind in ("prune", "int8"):
        parts.append(f"{ratios['size_ratio']:.1f}x smaller")
        if kind == "prune":
            parts.append(f"{ratios['macs_ratio']:.1f}x fewer MACs")
        if speed is not None:
            parts.append(f"{speed:.2f}x faster")
        if drop is not None:
            parts.append(f"{drop:.1f} mAP points lost" if drop > 0 else f"{-drop:.1f} mAP points gained")
    elif drop is not None:
        parts.append(f"{-drop:+.1f} mAP points against the same design trained without distillation")
    return ", ".join(parts) + f" ({record['id']} vs {baseline['id']})"


def errata_rows(captured: Mapping[str, str], document: Any,
                backbone_effect: Callable[[Any], str | None] | None = None) -> list[dict[str, str]]:
    """One row per snippet: ``snippet``, ``what happens`` (``captured``), ``instead`` and ``measured effect`` of
    the fix, from the first evidence pair present in ``document`` ("not measured in these records" otherwise).
    ``backbone_effect`` turns the document into the backbone row's effect (default: the fastest backbone within
    the lesson's accuracy gap, from the backbone study's records)."""
    from compresskit.report import records_of

    by_id = {record["id"]: record for record in records_of(document)}
    rows = []
    for snippet in SNIPPETS:
        effect = None
        for candidate, baseline in snippet.evidence:
            if candidate in by_id and baseline in by_id:
                effect = _effect(snippet.effect, by_id[candidate], by_id[baseline])
                break
        if snippet.effect == "backbone":
            effect = (backbone_effect or _backbone_effect)(document)
        rows.append({"snippet": snippet.code, "what happens": captured.get(snippet.key, "not run"),
                     "instead": snippet.instead, "measured effect": effect or "not measured in these records"})
    return rows


def _backbone_effect(document: Any) -> str | None:
    """The best torchvision backbone of lesson 05 (trained through the weights= API) against the teacher."""
    from compresskit.harness.targets import TARGETS, check_target

    target = next(target for target in TARGETS if target.id == "backbone-speed")
    verdict = check_target(target, document)
    if verdict.record is None:
        return None
    return f"lesson 05 builds seven trunks through this API (trained from random weights offline); the fastest " \
           f"within {target.max_map_drop:g} mAP points of the teacher, {verdict.record}, is {verdict.value:.2f}x " \
           f"faster in ONNX Runtime fp32 (target {target.threshold:g}x: {verdict.text()})"


def errata_markdown(rows: Sequence[Mapping[str, str]]) -> str:
    """The rows as a Markdown table (the captured text on one line per cell, its pipes escaped)."""
    header = ["snippet", "what happens", "instead", "measured effect"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [" ".join(str(row[key]).split()).replace("|", "\\|") for key in header]  # one line per cell
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
