"""Deciding how much to prune where (sensitivity scans) and pruning gradually with fine-tuning in between.

Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Callable, Sequence

from torch import nn
from tqdm.auto import tqdm

from compresskit.prune.structured import ChannelPruner, StructuredConfig, core_macs, detector_parts, prune_structured_

EvaluateFn = Callable[[nn.Module], float]


def sensitivity_scan(detector: nn.Module, parts: list[str], ratios: list[float], evaluate_fn: EvaluateFn,
                     config: StructuredConfig | None = None, progress: bool = True) -> list[dict]:
    """Prune one part at a time, at each ratio, on a copy of ``detector``, and measure what it costs.

    Args:
        detector: the trained detector (left untouched).
        parts: names from :func:`detector_parts`.
        ratios: pruning ratios to try for each part (0 measures the unpruned copy).
        evaluate_fn: ``model -> mAP`` (e.g. a lambda around ``engine.evaluate`` on a small val subset).
        config: rounding, importance and example size; its ``ratio`` and ``part_ratios`` are replaced.
        progress: show a progress bar.

    Returns:
        One row per (part, ratio): ``{"part", "ratio", "map", "macs"}`` (MACs of the pruned core).
    """
    config = config or StructuredConfig()
    known = detector_parts(detector)
    unknown = [part for part in parts if part not in known]
    if unknown:
        raise KeyError(f"unknown parts {unknown}; {type(detector).__name__} has {list(known)}")
    rows = []
    for part, ratio in tqdm([(p, r) for p in parts for r in ratios], desc="sensitivity", disable=not progress):
        candidate = copy.deepcopy(detector)
        if ratio > 0:
            # ratio 0 everywhere else: only this part's channels move, so the mAP drop is this part's alone.
            prune_structured_(candidate, replace(config, ratio=0.0, part_ratios={part: ratio}))
        rows.append({"part": part, "ratio": float(ratio), "map": float(evaluate_fn(candidate)),
                     "macs": core_macs(candidate, config.image_size)})
    return rows


def map_drop_points(row: dict, baseline_map: float) -> float:
    """mAP points a :func:`sensitivity_scan` row lost against ``baseline_map`` (both 0-1)."""
    return (baseline_map - row["map"]) * 100.0  # COCO mAP is 0-1; papers and lessons talk in points


def choose_part_ratios(rows: Sequence[dict], baseline_map: float, max_drop_points: float,
                       candidates: Sequence[float] | None = None) -> dict[str, float]:
    """Per part, the largest scanned ratio whose mAP drop stays within ``max_drop_points``.

    Ratios are walked upwards and the walk stops at the first one over budget, so a lucky noisy point beyond a
    failing ratio is never chosen.

    Args:
        rows: the output of :func:`sensitivity_scan`.
        baseline_map: mAP (0-1) of the unpruned detector.
        max_drop_points: allowed drop in mAP points (e.g. 1.0 = one point of COCO mAP).
        candidates: only consider these ratios (default: every scanned ratio).

    Returns:
        ``{part: ratio}`` (0.0 where even the smallest ratio costs too much), ready for ``part_ratios``.
    """
    allowed = None if candidates is None else {round(float(c), 6) for c in candidates}
    chosen: dict[str, float] = {}
    for part in dict.fromkeys(row["part"] for row in rows):
        chosen[part] = 0.0
        for row in sorted((r for r in rows if r["part"] == part), key=lambda r: r["ratio"]):
            if allowed is not None and round(row["ratio"], 6) not in allowed:
                continue
            if map_drop_points(row, baseline_map) > max_drop_points:
                break
            chosen[part] = float(row["ratio"])
    return chosen


def iterative_prune(detector: nn.Module, steps: list[float], finetune: Callable[[nn.Module, int], None],
                    evaluate_fn: EvaluateFn, config: StructuredConfig | None = None) -> list[dict]:
    """Prune ``detector`` in place towards cumulative targets, fine-tuning after each step.

    ``steps`` are cumulative fractions of the *original* widths: ``[0.25, 0.5]`` removes a quarter, then half of
    the original channels in total. torch-pruning ratios are relative to the widths it first saw only while one
    pruner is reused, so one pruner is built and stepped: step k asks for ``steps[k]`` of the original channels
    (not ``steps[k]`` of what is left, which would compound to 1 - 0.75 x 0.5 = 62.5 %). Part ratios in
    ``config`` are the targets at the last step and are reached proportionally.

    Args:
        detector: the detector to prune; ``finetune`` must train it in place (the pruner keeps its modules).
        steps: increasing cumulative ratios in (0, 1); replaces ``config.ratio``.
        finetune: ``(model, step index) -> None``, e.g. a short ``engine.fit``.
        evaluate_fn: ``model -> mAP``.
        config: rounding, importance, per-part targets, example size.

    Returns:
        One record per step: ``{"step", "ratio", "macs_pruned", "map_pruned", "macs_finetuned",
        "map_finetuned"}`` (before and after fine-tuning).
    """
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or not 0.0 < steps[0] or steps[-1] >= 1.0:
        raise ValueError(f"steps must be increasing cumulative ratios in (0, 1), got {steps}")
    config = replace(config or StructuredConfig(), ratio=float(steps[-1]))
    pruner = ChannelPruner(detector, config, schedule=[float(s) for s in steps])
    records = []
    for index, target in enumerate(steps):
        pruner.step()
        record = {"step": index + 1, "ratio": float(target), "macs_pruned": core_macs(detector, config.image_size),
                  "map_pruned": float(evaluate_fn(detector))}
        finetune(detector, index)
        record.update(macs_finetuned=core_macs(detector, config.image_size),
                      map_finetuned=float(evaluate_fn(detector)))
        records.append(record)
    return records
