"""Which profile each study runs on: the coco profile has no detectors for some of the lessons' studies.

The coco profile's detectors are torchvision's COCO-pretrained RetinaNet (teacher) and SSDlite (student). Every
study that only loads, quantizes, prunes without a fine-tune or measures them runs on it. The studies in
:data:`COCO_GAPS` measure detectors the kit trained on the embedded dataset (distilled students, backbone
detectors, the BatchNorm-head chain); under the coco profile they run on the embedded profile instead, and
:func:`study_profile` prints, once per study, what is missing, why, and what does run on COCO today. Every record
names the profile it was measured on, so the two are never mixed. Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from compresskit import settings


@dataclass(frozen=True)
class CocoGap:
    """A study whose detectors exist for the embedded dataset only.

    Attributes:
        detectors: what the study measures that the coco profile lacks.
        why: why the coco profile has none.
        on_coco: what of the lesson's technique does run on the coco profile today (a command or a lesson).
    """

    detectors: str
    why: str
    on_coco: str

    def reason(self) -> str:
        return (f"it measures {self.detectors}, which exist for the embedded dataset only: {self.why}. On COCO "
                f"today: {self.on_coco}.")

    def note(self, study: str) -> str:
        return f"The {study} study runs on the embedded profile: {self.reason()}"


_DISTILLER_IS_FCOS = ("the kit's location-by-location distiller (logits, features) pairs FCOS heads, while the coco "
                      "profile's detectors are a RetinaNet and an SSDlite, whose heads and anchors do not line up")

COCO_GAPS: dict[str, CocoGap] = {
    "distillation": CocoGap(
        detectors="FCOS students distilled from the FCOS teacher, and the pruned teacher recovered with and without "
                  "distillation",
        why=_DISTILLER_IS_FCOS,
        on_coco="the loss terms of sections 1 and 2 are the same for any detector, and section 5 distils the COCO "
                "pair through the teacher's boxes (`compresskit distill --method boxes --init coco-pretrained`)"),
    "backbones": CocoGap(
        detectors="the teacher's FCOS design on seven torchvision trunks, each trained for 8 epochs",
        why="about 6.5 minutes each on one H100, over an hour each on two CPU cores; none was trained on COCO",
        on_coco="`compresskit train --backbone NAME --data SPLIT` trains one on a split folder of COCO images "
                "(a GPU job: each step reads 16 photos)"),
    "combined": CocoGap(
        detectors="the BatchNorm-head teacher and its pruned, distilled recovery",
        why="the BatchNorm head converts the kit's FCOS head, and the recovery distils FCOS: " + _DISTILLER_IS_FCOS,
        on_coco="static int8 of the COCO teacher and student in every runtime (lesson 03, or "
                "`COMPRESSKIT_PROFILE=coco compresskit quantize --preset student --runtime auto`); the prune -> "
                "distil -> int8 route without the BatchNorm head is `compresskit prune --kd boxes` on a fine-tuned "
                "COCO teacher (a GPU job, docs/coco.md), then `compresskit study --checkpoint` on the result"),
    "search": CocoGap(
        detectors="the chosen variant of the committed reference search",
        why="that search ran on the embedded teacher, and its artifact is that teacher's",
        on_coco="`COMPRESSKIT_PROFILE=coco compresskit search --preset student` searches the COCO student live "
                "(lesson 08 runs a small one)"),
}


def study_profile(study: str, profile: str | None = None, log: Callable[[str], None] | None = print) -> str:
    """The profile ``study`` runs on: ``profile`` (default ``COMPRESSKIT_PROFILE``), or ``embedded`` when the
    study's detectors exist for the embedded dataset only (then ``log`` gets the note saying so)."""
    profile = profile or settings.profile()
    gap = COCO_GAPS.get(study)
    if profile == "embedded" or gap is None:
        return profile
    if log is not None:
        log(gap.note(study))
    return "embedded"
