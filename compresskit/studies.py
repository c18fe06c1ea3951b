"""Whole studies as functions: the measurements a lesson makes, runnable headless by ``compresskit reproduce``.

Lessons call the same functions step by step; ``reproduce`` runs them on the full val split and regenerates the
reference ``results.json`` and figures. Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from compresskit import prune
from compresskit.baselines import baseline_records
from compresskit.bench import Study
from compresskit.data import load_split
from compresskit.engine import make_loader
from compresskit.models import load_preset
from compresskit.report import plot_pareto, write_records

UNSTRUCTURED_AMOUNTS = (0.3, 0.5, 0.7, 0.9)


def measure_unstructured(study: Study, detector, amounts=UNSTRUCTURED_AMOUNTS) -> list[dict]:
    """Global L1 unstructured pruning of a copy of ``detector`` at each amount, made permanent and measured."""
    records = []
    for amount in amounts:
        config = prune.UnstructuredConfig(amount=amount)
        sparse = prune.make_permanent_(prune.prune_unstructured_(copy.deepcopy(detector), config))
        records.append(study.measure(sparse, f"pruning/{study.model}/unstructured-{amount:.0%}",
                                     technique="unstructured_pruning", config=config,
                                     variant=f"global L1, {amount:.0%} of conv weights zeroed"))
    return records


def measure_structured(study: Study, pruned, unpruned, config: dict, name: str = "structured-50",
                       variant: str = "50 % channels, fine-tuned") -> list[dict]:
    """A structurally pruned detector in torch eager and ONNX Runtime, each against the unpruned one in the same
    runtime (the eager baseline is the study's; the ONNX Runtime baseline is measured here)."""
    eager = study.measure(pruned, f"pruning/{study.model}/{name}/eager", technique="structured_pruning",
                          variant=variant, config=config)
    ort_base = study.measure(unpruned, f"pruning/{study.model}/ort-fp32", technique="baseline",
                             runtime="onnxruntime", variant=f"unpruned {study.model}, ONNX Runtime fp32")
    ort = study.measure(pruned, f"pruning/{study.model}/{name}/ort-fp32", technique="structured_pruning",
                        runtime="onnxruntime", baseline=ort_base["id"], variant=f"{variant}, ONNX Runtime",
                        config=config)
    return [eager, ort_base, ort]


def pruning_study(val_loader=None, progress: bool = False) -> list[dict]:
    """The records of lesson 02 on the full val split: baseline, unstructured sweep, shipped structured prune."""
    teacher, label_map, _ = load_preset("teacher")
    val_loader = val_loader or make_loader(load_split("val", label_map=label_map), batch_size=8, train=False)
    study = Study(lesson="02_pruning", model="teacher", val_loader=val_loader, label_map=label_map,
                  progress=progress)
    study.measure(teacher, "pruning/teacher/eager", technique="baseline", variant="unpruned teacher, fp32")
    measure_unstructured(study, teacher)
    finetuned, _, meta = prune.load_shipped_pruned()
    measure_structured(study, finetuned, teacher, config=meta["prune_config"],
                       variant=f"50 % channels, fine-tuned {meta['train_config']['epochs']} epochs")
    return study.records


def reproduce(out: Path | str) -> Path:
    """Measure every study on the full val split into ``out/results.json`` and redraw ``out/figures/``."""
    out = Path(out)
    records = baseline_records(progress=False) + pruning_study()
    results = write_records(records, reports_dir=out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for axis in ("latency", "size", "macs"):
        figure = plot_pareto(records, x=axis, title=f"mAP against {axis}, every measured variant")
        figure.savefig(figures / f"pareto_{axis}.png", dpi=120)
    return results
