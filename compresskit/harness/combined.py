"""The combined pipeline (lesson 06): techniques stacked, every stage measured against the fp32 teacher of the
same run, in torch eager and ONNX Runtime.

Two routes, both from shipped checkpoints (no training in the lesson):

- **prune -> distil -> int8** (model ``teacher``): the teacher with the int8-friendly BatchNorm head of lesson 03,
  structurally pruned (half the channels, lesson 02), recovered by a fine-tune with distillation from the unpruned
  detector (lesson 04; ``compresskit prune --kd --checkpoint teacher_bnhead.pt``), then static int8.
- **lightweight design -> distil -> int8** (model ``student``): the small detector trained without distillation
  (the equal-budget control of lesson 04), the same design trained with logit + feature distillation, then int8.

The int8 stage is ``auto`` (``harness.auto_int8``): every int8 runtime quantizes the detector, each int8 core is
timed against the teacher's ONNX Runtime fp32 core in the same run, and the fastest within
:data:`~compresskit.harness.targets.COMBINED_INT8_BUDGET` mAP points becomes the stage; the others stay as records
(``.../auto/<runtime>-int8``), and the stage's record says what was picked and why. The prune route holds its int8
stage to that budget against the fp32 teacher (the whole pipeline's accuracy); the small-design route, far below
the teacher by design, holds it against its own fp32 core (what int8 costs that detector).

Every stage is a ``combined`` record whose baseline is the teacher in the same runtime, so the ratios read "what
the pipeline has bought so far". The study also runs the article's four snippets (``compresskit.harness.errata``)
and keeps what they did in its baseline record.
Introduced in ``06_combined_pipeline.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

from compresskit.harness.auto_int8 import Int8Settings, measure_auto
from compresskit.harness.distillation import student_architecture
from compresskit.harness.loading import load_for_study, load_trained, require_embedded, train_split
from compresskit.harness.quantization import quantize_for_study
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.targets import (COMBINED_INT8_BUDGET, COMBINED_MAP_DROP, COMBINED_RECORD,
                                         COMBINED_SIZE_RATIO, COMBINED_SPEEDUP)
from compresskit.harness.variant import Study, artifact_dir
from compresskit.quantize.ort import OrtQuantConfig
from compresskit.runtimes import OnnxCore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LESSON = "06_combined_pipeline"
SOURCE = "teacher_bnhead"  # lesson 03's BatchNorm head: the whole head quantizes (no GroupNorm float island)
PRUNED_KD = "teacher_bnhead_pruned_kd"  # compresskit prune --kd --checkpoint teacher_bnhead.pt (see the README)
STUDENT_CONTROL, STUDENT_KD = "student_kd_none", "student_kd_both"
CALIBRATION_IMAGES = 64
FP32_ONLY_CALIBRATION = 4  # the export step writes the fp32 core; its int8 twin is not measured
TEACHER_EAGER, TEACHER_ORT = "combined/teacher/eager", "combined/teacher/ort-fp32"
FINAL_TEACHER = COMBINED_RECORD  # the record the combined targets are checked on (harness.targets)
FINAL_STUDENT = "combined/student/kd-int8"
ERRATA_IMAGES = 4  # val images whose class logits the article's loss is tried on


@dataclass(frozen=True)
class Stage:
    """One step of a route as the figure and table show it: record id, short name, what was done."""

    record: str
    name: str
    action: str


ROUTES: dict[str, tuple[Stage, ...]] = {
    "prune -> distil -> int8": (
        Stage(TEACHER_ORT, "teacher", "fp32 teacher (ONNX Runtime)"),
        Stage("combined/teacher/bnhead", "BN head", "GroupNorm head replaced by a BatchNorm head (lesson 03)"),
        Stage("combined/teacher/prune-kd", "pruned + KD", "half the channels pruned, fine-tuned with distillation"),
        Stage(FINAL_TEACHER, "int8", "static int8, fastest runtime within budget"),
    ),
    "small design -> distil -> int8": (
        Stage(TEACHER_ORT, "teacher", "fp32 teacher (ONNX Runtime)"),
        Stage("combined/student/small", "small design", "the student design, trained without distillation"),
        Stage("combined/student/kd", "+ KD", "same design and budget, logit + feature distillation"),
        Stage(FINAL_STUDENT, "int8", "static int8, fastest runtime within budget"),
    ),
}


def _ort_fp32_record(study: Study, detector: nn.Module, calibration_set, record_id: str, variant: str, model: str,
                     config: dict | None = None) -> dict:
    """``detector``'s fp32 core in ONNX Runtime against the teacher's: the fixed-shape export the int8 paths also
    start from (written by the ONNX quantizer, calibrated on a few images only: its int8 file is not used)."""
    quantized = quantize_for_study(study, detector, calibration_set, record_id.replace("combined/", ""),
                                   OrtQuantConfig(calibration_images=FP32_ONLY_CALIBRATION))
    return study.measure(detector, record_id, technique="combined", runtime="onnxruntime", baseline=TEACHER_ORT,
                         core=OnnxCore(quantized.fp32_path, threads=study.threads), model=model, variant=variant,
                         config=config)


def combined_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                   progress: bool = False, log: Callable[[str], None] | None = None,
                   reuse: ReuseCache | None = None) -> Study:
    """Every record of lesson 06: the teacher (eager, ORT fp32) and each stage of :data:`ROUTES`.

    Eager records (the pruned + KD detector, before int8) compare with the eager teacher, ONNX Runtime records
    with the teacher's ONNX Runtime fp32 core; all timings are paired and interleaved in this run.
    """
    from compresskit.harness.errata import run_errata
    from compresskit.models import load_checkpoint, shipped_checkpoint

    teacher = load_for_study("teacher", profile)
    require_embedded(teacher, "pruned and distilled detectors")
    study = Study.of(LESSON, teacher, val_images, runs=runs, progress=progress, log=log, reuse=reuse)
    calibration_set = train_split(teacher, augment=False)
    images = [study.val_loader.dataset[index][0] for index in range(ERRATA_IMAGES)]
    # The article's snippets run here, on this teacher and today's libraries; what they did is kept in the
    # baseline record, so summary.md is drawn from results.json alone.
    study.measure(teacher.model, TEACHER_EAGER, technique="baseline", variant="the teacher, fp32",
                  config={"errata": run_errata(teacher.model, images)})
    quantized = quantize_for_study(study, teacher.model, calibration_set, "teacher",
                                   OrtQuantConfig(calibration_images=CALIBRATION_IMAGES))
    study.measure(teacher.model, TEACHER_ORT, technique="baseline", runtime="onnxruntime",
                  core=OnnxCore(quantized.fp32_path, threads=study.threads), baseline=TEACHER_EAGER,
                  variant="the teacher, fp32 core in ONNX Runtime")
    # int8 alone, from the same export: what the errata's quantization fix buys without pruning
    study.measure(teacher.model, "combined/teacher/int8", technique="static_ptq", runtime="onnxruntime",
                  core=OnnxCore(quantized.int8_path, threads=study.threads), baseline=TEACHER_ORT,
                  variant="the teacher, QDQ int8 core", config=quantized.as_dict())

    source = load_checkpoint(shipped_checkpoint(SOURCE))[0]
    _ort_fp32_record(study, source, calibration_set, "combined/teacher/bnhead", "BatchNorm head, fp32 core",
                     "teacher", config={"checkpoint": SOURCE})
    pruned, _, meta = load_checkpoint(shipped_checkpoint(PRUNED_KD))  # shipped: no training in the lesson
    trained = {"checkpoint": PRUNED_KD, "prune_config": meta.get("prune_config"), "kd_config": meta.get("kd_config"),
               "train_config": meta.get("train_config"), "trained_on": meta.get("trained_on")}
    study.measure(pruned, "combined/teacher/prune-kd/eager", technique="combined", baseline=TEACHER_EAGER,
                  model="teacher", variant="BN head, pruned 50%, distilled fine-tune; fp32 eager",
                  train_seconds=meta.get("train_seconds"), config=trained)
    _ort_fp32_record(study, pruned, calibration_set, "combined/teacher/prune-kd", "BN head, pruned 50%, distilled "
                     "fine-tune; fp32 core", "teacher", config=trained)
    _auto_int8(study, pruned, calibration_set, "teacher/prune-kd", FINAL_TEACHER, "teacher",
               "BN head, pruned 50%, distilled fine-tune; ", trained, accuracy_reference=TEACHER_ORT)

    architecture = student_architecture(teacher.label_map)
    for name, record_id, variant in ((STUDENT_CONTROL, "combined/student/small", "student, no distillation"),
                                     (STUDENT_KD, "combined/student/kd", "student, logit + feature distillation")):
        student, student_meta, _ = load_trained(name, architecture)
        config = {"checkpoint": name, "kd_config": student_meta.get("kd_config"),
                  "train_config": student_meta.get("train_config")}
        _ort_fp32_record(study, student, calibration_set, record_id, f"{variant}; fp32 core", "student",
                         config=config)
    _auto_int8(study, student, calibration_set, "student/kd", FINAL_STUDENT, "student",
               "student, logit + feature distillation; ", config, accuracy_reference="combined/student/kd")
    return study


def _auto_int8(study: Study, detector: nn.Module, calibration_set, name: str, stage_id: str, model: str,
               variant: str, config: dict, accuracy_reference: str) -> dict:
    """A route's int8 stage: every int8 runtime's core of ``detector`` against the teacher's ONNX Runtime fp32
    core, and the fastest within :data:`COMBINED_INT8_BUDGET` points of ``accuracy_reference``'s mAP as record
    ``stage_id`` (see the module docstring). When none stays within the budget, the stage is the candidate that
    lost least, and its record says that no runtime met the budget."""
    choice, picked = measure_auto(study, detector, calibration_set,
                                  (study.artifacts or artifact_dir()) / f"{LESSON}-{name.replace('/', '-')}",
                                  TEACHER_ORT, f"combined/{name}/auto", COMBINED_INT8_BUDGET, chosen_id=stage_id,
                                  accuracy_reference=accuracy_reference,
                                  settings=Int8Settings(calibration_images=CALIBRATION_IMAGES, threads=study.threads),
                                  technique="combined", model=model,
                                  variant=variant, config=config)
    if picked is None:
        candidate = min(choice.candidates, key=lambda candidate: candidate.map_drop_points)
        picked = study.records_by_id[candidate.record]
        picked["id"] = stage_id
        picked["config"] = {**picked["config"], "chosen": True, "auto": choice.as_dict()}
    return picked


def stage_rows(document) -> list[dict]:
    """One row per stage of :data:`ROUTES` present in ``document`` (a results document or a list of records):
    route, stage, action, mAP x100, size MB, MACs G and the ratios against the route's teacher record."""
    from compresskit.report import compare, records_of

    by_id = {record["id"]: record for record in records_of(document)}
    rows = []
    for route, stages in ROUTES.items():
        for stage in stages:
            record = by_id.get(stage.record)
            if record is None:
                continue
            baseline = by_id.get(record.get("baseline") or "")
            ratios = compare(record, baseline) if baseline is not None and stage.record != TEACHER_ORT else {}
            action = stage.action
            if (record.get("config") or {}).get("auto"):
                action += f" ({record['runtime']})"
            rows.append({"route": route, "stage": stage.name, "action": action, "record": stage.record,
                         "map": record.get("map"), "size_mb": record["size_bytes"] / 1e6,
                         "macs_g": record["macs"] / 1e9, "size_ratio": ratios.get("size_ratio", 1.0),
                         "speedup": ratios.get("latency_speedup", 1.0),
                         "speedup_interval": ratios.get("latency_interval"),
                         "map_drop_points": ratios.get("map_drop_points", 0.0)})
    return rows


def captured_errata(document) -> dict[str, str]:
    """What the article's snippets did when the combined study ran (kept in its baseline record's config)."""
    from compresskit.report import records_of

    for record in records_of(document):
        if record["id"] == TEACHER_EAGER:
            return dict((record.get("config") or {}).get("errata") or {})
    return {}


def stages_markdown(document) -> str:
    """:func:`stage_rows` as a Markdown table (empty string when the document has no combined records)."""
    rows = stage_rows(document)
    if not rows:
        return ""
    lines = ["| route | stage | what was done | mAP x100 | size MB | MACs G | smaller | faster (paired) | "
             "mAP drop |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        interval = row["speedup_interval"]
        speed = f"{row['speedup']:.2f}x" + (f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")
        shown_map = "-" if row["map"] is None else f"{100 * row['map']:.1f}"
        drop = "-" if row["map_drop_points"] is None else f"{row['map_drop_points']:.1f}"
        lines.append(f"| {row['route']} | {row['stage']} | {row['action']} | {shown_map} | {row['size_mb']:.2f} "
                     f"| {row['macs_g']:.2f} | {row['size_ratio']:.1f}x | {speed} | {drop} |")
    return "\n".join(lines)


def plot_stages(document) -> "Figure":
    """:func:`compresskit.report.plot_stages` of :func:`stage_rows`, with the combined targets of
    :mod:`~compresskit.harness.targets` dashed and the document's environment as its caption.

    Raises:
        MissingRecordsError: the document holds no combined study.
    """
    from compresskit.report import MissingRecordsError, StageTargets, add_caption
    from compresskit.report import plot_stages as draw

    rows = stage_rows(document)
    if not rows:
        raise MissingRecordsError("no combined study in these records; run `compresskit reproduce --only combined`")
    targets = StageTargets(map_drop_points=COMBINED_MAP_DROP, size_ratio=COMBINED_SIZE_RATIO, speedup=COMBINED_SPEEDUP)
    return add_caption(draw(rows, targets), document)
