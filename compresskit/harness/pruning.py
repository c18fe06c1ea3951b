"""The pruning study (lesson 02): unstructured sparsity sweep and structured channel pruning, measured.

Lessons call these step by step; ``compresskit reproduce`` runs :func:`pruning_study` whole.
Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

from compresskit import prune
from compresskit.harness.loading import load_for_study, val_loader
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.variant import Study

LESSON = "02_pruning"
UNSTRUCTURED_AMOUNTS = (0.3, 0.5, 0.7, 0.9)


def measure_unstructured(study: Study, detector, amounts: Sequence[float] | None = None) -> list[dict]:
    """Global L1 unstructured pruning of a copy of ``detector`` at each amount (default ``UNSTRUCTURED_AMOUNTS``),
    made permanent and measured."""
    records = []
    for amount in amounts or UNSTRUCTURED_AMOUNTS:
        config = prune.UnstructuredConfig(amount=amount)
        sparse = prune.make_permanent_(prune.prune_unstructured_(copy.deepcopy(detector), config))
        records.append(study.measure(sparse, f"pruning/{study.model}/unstructured-{amount:.0%}",
                                     technique="unstructured_pruning", config=config,
                                     variant=f"global L1, {amount:.0%} of conv weights zeroed"))
    return records


def measure_structured(study: Study, pruned, unpruned, config, name: str = "structured-50",
                       variant: str = "50 % channels, fine-tuned", train_seconds: float | None = None) -> list[dict]:
    """A structurally pruned detector in torch eager and ONNX Runtime, each timed against the unpruned detector in
    the same runtime (the eager baseline is the study's; the ONNX Runtime baseline is measured here)."""
    eager = study.measure(pruned, f"pruning/{study.model}/{name}/eager", technique="structured_pruning",
                          variant=variant, config=config, train_seconds=train_seconds)
    ort_base = study.measure(unpruned, f"pruning/{study.model}/ort-fp32", technique="baseline",
                             runtime="onnxruntime", variant=f"unpruned {study.model}, ONNX Runtime fp32")
    ort = study.measure(pruned, f"pruning/{study.model}/{name}/ort-fp32", technique="structured_pruning",
                        runtime="onnxruntime", baseline=ort_base["id"], variant=f"{variant}, ONNX Runtime",
                        config=config, train_seconds=train_seconds)
    return [eager, ort_base, ort]


def pruned_for_profile(loaded) -> tuple:
    """The structurally pruned detector of ``loaded``'s profile: ``(detector, config, variant, metadata)``.

    embedded: the shipped pruned + fine-tuned teacher. coco: the kit ships no fine-tuned COCO model, so the
    shipped recipe's cut is applied to the pretrained detector and measured *without* a fine-tune (the variant
    text says so; the accuracy is not comparable to a fine-tuned result).
    """
    if loaded.profile == "embedded" and loaded.name == "teacher":
        finetuned, _, meta = prune.load_shipped_pruned()
        return (finetuned, meta["prune_config"],
                f"{meta['prune_config']['ratio']:.0%} channels, fine-tuned {meta['train_config']['epochs']} epochs",
                meta)
    config = prune.PRUNE_RECIPE
    pruned = prune.prune_structured_(copy.deepcopy(loaded.model), config)
    return pruned, config, f"{config.ratio:.0%} channels, no fine-tune", {}


def pruning_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                  model: str = "teacher", amounts: Sequence[float] | None = None, progress: bool = False,
                  log: Callable[[str], None] | None = None, reuse: ReuseCache | None = None) -> Study:
    """The records of lesson 02: baseline, unstructured sweep, structured prune (eager and ONNX Runtime).

    Args:
        profile: data profile (default ``COMPRESSKIT_PROFILE``); the detector and the data both come from it.
        val_images: evaluate on the first N val images only (None: the whole val split).
    Returns:
        The :class:`Study` with its records.
    """
    loaded = load_for_study(model, profile)
    study = Study(lesson=LESSON, model=model, profile=loaded.profile, val_loader=val_loader(loaded, val_images),
                  label_map=loaded.label_map, runs=runs, progress=progress, log=log, reuse=reuse)
    study.measure(loaded.model, f"pruning/{model}/eager", technique="baseline", variant=f"unpruned {model}, fp32")
    measure_unstructured(study, loaded.model, amounts)
    pruned, config, variant, meta = pruned_for_profile(loaded)
    measure_structured(study, pruned, loaded.model, config=config, variant=variant,
                       train_seconds=meta.get("train_seconds"))
    return study
