"""The quantization study (lesson 03): the article's dynamic call, fp16, static int8 in ONNX Runtime (plain, with
the deployment-friendly BatchNorm head, for the student and the pruned teacher), the same detectors in OpenVINO
with NNCF's int8, torchao PT2E, calibration sweep, per-part sensitivity. Every int8 record is paired with the fp32
core of the same runtime, measured in the same run; each OpenVINO fp32 core with the ONNX Runtime fp32 core of
the same detector, the common yardstick.
Introduced in ``03_quantization.ipynb``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from compresskit.harness.loading import load_for_study, train_split, training_record, val_loader
from compresskit.harness.reuse import ReuseCache, dataset_identity, fingerprint
from compresskit.harness.variant import Study, artifact_dir
from compresskit.quantize import dynamic
from compresskit.quantize.ort import (OrtQuantConfig, QuantizedCore, choose_activations, choose_reduce_range,
                                     fp32_path_for, quantize_core_onnx)
from compresskit.runtimes import OnnxCore

LESSON = "03_quantization"
FP16_COMPUTE_PAIRS = 5
CALIBRATION_SWEEP = (4, 16, 64, 256)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SENSITIVITY_PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "fpn", "head", "cls_logits", "bbox_reg",
                     "bbox_ctrness")


def quantize_for_study(study: Study, detector: nn.Module, calibration_set, name: str,
                       config: OrtQuantConfig) -> QuantizedCore:
    """``quantize_core_onnx`` into the run's artifact folder (files named after the record).

    With the study's :class:`~compresskit.harness.reuse.ReuseCache` (``compresskit reproduce``), a call identical to
    an earlier one of the run (same weights and module settings, same calibration images, same settings) copies
    the earlier call's two files instead of quantizing again: quantization is deterministic, so they would be the
    same bytes.

    Within one study, a call that differs from an earlier one only in what it keeps in float (the sensitivity
    scan, a backbone's trunk-in-float control) reads that call's activation ranges instead of calibrating again:
    they are the same numbers, and the int8 file is the same bytes (tested).
    """
    out_path = artifact_dir() / f"{study.lesson}-{name}.onnx"
    images = dataset_identity(calibration_set)
    activations = choose_activations(config.activations)  # both follow the CPU: part of what makes the file
    reuse = study.reuse
    key = None if images is None or reuse is None else fingerprint(
        detector, "quantize_core_onnx", dataclasses.asdict(config), activations,
        choose_reduce_range(config.reduce_range, activations[0]), images)
    earlier = None if reuse is None else reuse.recall(key)
    if earlier is not None:
        source, quantized = earlier
        if study.log is not None:
            study.log(f"  {name}: same detector, calibration images and settings as {source}; its files are reused")
        return _copied(quantized, out_path)
    quantized = quantize_core_onnx(detector, calibration_set, config, out_path,
                                   calibration_cache=_calibration_cache(study, detector, config, images))
    if reuse is not None:
        reuse.remember(key, f"{study.lesson}/{name}", quantized)
    return quantized


def _calibration_cache(study: Study, detector: nn.Module, config: OrtQuantConfig, images: tuple | None) -> Path | None:
    """The activation-range file shared by this study's calls that calibrate the same detector on the same images
    with the same settings (``exclude`` aside), or None when they cannot be identified. The study's first such call
    writes it (a file left by an earlier run is removed first: every study calibrates once itself)."""
    settings = {field: value for field, value in dataclasses.asdict(config).items() if field != "exclude"}
    key = None if images is None else fingerprint(detector, "calibration", settings,
                                                      choose_activations(config.activations), images)
    if key is None:
        return None
    path = (study.artifacts or artifact_dir()) / "calibration" / f"{key[:32]}.json"
    if key not in study.calibrations:
        path.unlink(missing_ok=True)
        study.calibrations.add(key)
    return path


def _copied(quantized: QuantizedCore, out_path: Path) -> QuantizedCore:
    """``quantized``'s int8 and fp32 files copied to ``out_path`` and its fp32 sibling (both or neither)."""
    targets = {out_path: quantized.int8_path, fp32_path_for(out_path): quantized.fp32_path}
    parts = {target: target.with_name(target.name + ".part") for target in targets}
    try:
        for target, source in targets.items():
            shutil.copyfile(source, parts[target])
        for target, part in parts.items():
            part.replace(target)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    return dataclasses.replace(quantized, int8_path=out_path, fp32_path=fp32_path_for(out_path))


def measure_dynamic_and_fp16(study: Study, detector: nn.Module) -> list[dict]:
    """The article's ``quantize_dynamic`` call, fp16 storage and fp16 compute, each against the study baseline."""
    article = dynamic.article_dynamic_quant(detector)
    changed = f"{len(article.changed)} modules quantized; Conv2d before/after {article.before.get('Conv2d')}/" \
              f"{article.after.get('Conv2d')}"
    records = [study.measure(article.model, f"quantization/{study.model}/dynamic-article", technique="dynamic_quant",
                             variant=f"quantize_dynamic({{Linear, Conv2d}}, qint8): {changed}",
                             config={"call": "torch.ao.quantization.quantize_dynamic", "changed": article.changed})]
    stored = dynamic.fp16_storage(detector)
    records.append(study.measure(dynamic.fp16_to_float(stored), f"quantization/{study.model}/fp16-storage",
                                 technique="fp16", artifact=stored,
                                 variant="fp16 weights shipped, upcast to fp32 to run"))
    half = dynamic.fp16_compute(detector)
    # Half-precision convs have no fast CPU kernel (measured ~40x slower than fp32 here): a few timed pairs after
    # one warm-up call show it (fewer when the study times fewer), and evaluating mAP would take many minutes;
    # fp16 storage above already shows fp16's accuracy.
    records.append(study.measure(detector, f"quantization/{study.model}/fp16-compute", technique="fp16",
                                 core=half.core, artifact=stored, evaluate_map=False,
                                 runs=min(FP16_COMPUTE_PAIRS, study.runs),
                                 warmup=1,
                                 variant="core computed in fp16 on the CPU (latency only)"))
    return records


def measure_ort_pair(study: Study, detector: nn.Module, calibration_set, name: str, config: OrtQuantConfig,
                     fp32_baseline: str | None = None, int8_baseline: str | None = None, variant: str = "",
                     model: str | None = None) -> list[dict]:
    """One ORT fp32 core and its int8 version: the fp32 record (against ``fp32_baseline`` or the study baseline)
    and the int8 record, paired with that fp32 core unless ``int8_baseline`` names another fp32 ORT record (the
    deployment head is compared with the model it replaces). Returns ``[fp32, int8]``."""
    quantized = quantize_for_study(study, detector, calibration_set, name, config)
    common = {"runtime": "onnxruntime", "model": model}
    fp32 = study.measure(detector, f"quantization/{name}/ort-fp32", technique="baseline",
                         core=OnnxCore(quantized.fp32_path, threads=study.threads), baseline=fp32_baseline,
                         variant=f"{variant}fp32 core, fixed shape" if config.fixed_shape else f"{variant}fp32 core",
                         **common)
    int8 = study.measure(detector, f"quantization/{name}/ort-int8", technique="static_ptq",
                         core=OnnxCore(quantized.int8_path, threads=study.threads),
                         baseline=int8_baseline or fp32["id"],
                         variant=f"{variant}QDQ int8, per-channel weights, {quantized.activations} activations, "
                                 f"{config.method}, {quantized.calibration_images} calibration images",
                         config={**quantized.as_dict(), "activation_reason": quantized.activation_reason},
                         **common)
    return [fp32, int8]


def measure_openvino_pair(study: Study, detector: nn.Module, calibration_set, name: str, calibration_images: int,
                          ort_fp32: str, variant: str = "", model: str | None = None) -> list[dict]:
    """The same detector in OpenVINO: its fp32 IR against ``ort_fp32`` (the ONNX Runtime fp32 core of the same
    detector, the yardstick every int8 path is read against) and NNCF's int8 IR against that fp32 IR, calibrated
    on the same train images as ONNX Runtime's int8. Returns ``[fp32, int8]``."""
    from compresskit.quantize.openvino import OpenVinoQuantConfig, quantize_core_openvino
    from compresskit.runtimes import OpenVinoCore

    config = OpenVinoQuantConfig(calibration_images=calibration_images)
    quantized = quantize_core_openvino(detector, calibration_set, config,
                                       (study.artifacts or artifact_dir()) / f"{study.lesson}-{name}-ov-int8.xml")
    common = {"runtime": "openvino", "model": model}
    fp32 = study.measure(detector, f"quantization/{name}/ov-fp32", technique="baseline", baseline=ort_fp32,
                         core=OpenVinoCore(quantized.fp32_path, threads=study.threads),
                         variant=f"{variant}fp32 IR (f32 inference precision)", **common)
    int8 = study.measure(detector, f"quantization/{name}/ov-int8", technique="static_ptq", baseline=fp32["id"],
                         core=OpenVinoCore(quantized.int8_path, threads=study.threads),
                         variant=f"{variant}NNCF int8 ({config.preset} preset), {quantized.calibration_images} "
                                 "calibration images", config=quantized.as_dict(), **common)
    return [fp32, int8]


def measure_int8_only(study: Study, detector: nn.Module, calibration_set, name: str, config: OrtQuantConfig,
                      baseline: str, variant: str) -> dict:
    """An int8 core against an fp32 ORT record already in the study (calibration and method variants)."""
    quantized = quantize_for_study(study, detector, calibration_set, name, config)
    return study.measure(detector, f"quantization/{name}/ort-int8", technique="static_ptq", runtime="onnxruntime",
                         core=OnnxCore(quantized.int8_path, threads=study.threads), baseline=baseline,
                         variant=variant, config=quantized.as_dict())


def measure_pt2e(study: Study, detector: nn.Module, calibration_set, calibration_images: int = 32,
                 recorded_qat: bool = False) -> tuple[dict, dict, bytes]:
    """torchao PT2E int8 lowered by ``torch.compile``, paired with the fp32 core compiled the same way (same
    runtime, same run). Returns the fp32 and int8 records and the int8 artifact (``torch.export.save`` bytes).

    With ``recorded_qat`` and a QAT training record in the package (``checkpoints/<model>_qat.json``, written
    by ``compresskit quantize --runtime torchao --qat-steps N``), a ``qat`` record follows: the int8 program
    after QAT has this graph, operators and dtypes (only the int8 values and scales differ), so its size and
    latency are measured on this one, and its mAP is the QAT run's, measured on the full val split; the record
    says so."""
    from compresskit.models import shipped_checkpoint
    from compresskit.quantize.pt2e import Pt2eConfig, quantize_pt2e

    pt2e = quantize_pt2e(detector, calibration_set, Pt2eConfig(calibration_images=calibration_images))
    # the torch-compile runtime's own core: a compiled copy of the fp32 core, one image per call
    fp32 = study.measure(detector, f"quantization/{study.model}/compile-fp32", technique="baseline",
                         runtime="torch-compile", variant="fp32 core, torch.compile (inductor)")
    summary = {key: value for key, value in pt2e.summary.items() if key != "lowered"}
    summary["lowered_conv_ops"] = pt2e.summary.get("lowered", {})
    artifact = pt2e.artifact_bytes()
    int8 = study.measure(detector, f"quantization/{study.model}/pt2e-int8", technique="static_ptq",
                         runtime="torch-compile", core=pt2e, baseline=fp32["id"], artifact=artifact,
                         variant=f"torchao PT2E, X86 Inductor quantizer, {calibration_images} calibration images, "
                                 "torch.compile",
                         config={**dataclasses.asdict(pt2e.config), **summary,
                                 "compile_seconds": round(pt2e.compile_seconds or 0.0, 1)})
    if recorded_qat and shipped_checkpoint(f"{study.model}_qat").with_suffix(".json").is_file():
        qat = training_record(f"{study.model}_qat")
        study.measure(detector, f"quantization/{study.model}/pt2e-qat-int8", technique="qat",
                      runtime="torch-compile", core=pt2e, baseline=fp32["id"], artifact=artifact,
                      variant=f"torchao PT2E QAT ({qat['qat_config']['max_iters_per_epoch']} steps), size and "
                              "latency of the same int8 graph, mAP from its run",
                      train_seconds=qat["train_seconds"], recorded_metrics=qat["val_metrics"],
                      config={"qat_config": qat["qat_config"], "trained_on": qat["trained_on"],
                              "ptq_val_metrics": qat["ptq_val_metrics"], "fp32_val_metrics": qat["fp32_val_metrics"]})
    return fp32, int8, artifact


def calibration_sweep(study: Study, detector: nn.Module, calibration_set, baseline: str,
                      counts: Sequence[int] = CALIBRATION_SWEEP,
                      methods: Sequence[str] = CALIBRATION_METHODS) -> list[dict]:
    """int8 mAP against the number of calibration images (minmax), then each calibration method at 64 images."""
    records = []
    for count in counts:
        config = OrtQuantConfig(calibration_images=count)
        records.append(measure_int8_only(study, detector, calibration_set, f"{study.model}/calib-{count}", config,
                                         baseline, f"QDQ int8, minmax, {count} calibration images"))
    for method in methods:
        if method == "minmax":
            continue  # the 64-image minmax point is in the sweep
        config = OrtQuantConfig(calibration_images=64, method=method)
        records.append(measure_int8_only(study, detector, calibration_set, f"{study.model}/method-{method}", config,
                                         baseline, f"QDQ int8, {method}, 64 calibration images"))
    return records


def sensitivity_study(profile: str | None = None, val_images: int | None = 100, runs: int = 10,
                      calibration_images: int = 16, parts: Sequence[str] = SENSITIVITY_PARTS, progress: bool = False,
                      log: Callable[[str], None] | None = None, reuse: ReuseCache | None = None) -> Study:
    """Per-part sensitivity of the teacher to int8: each part quantized alone (the rest float), ranked by mAP cost;
    then every part int8 except the most sensitive one. On the first ``val_images`` val images (default 100), each
    record against the fp32 ORT core on the same images.
    """
    teacher = load_for_study("teacher", profile)
    study = Study(lesson=LESSON, model="teacher", profile=teacher.profile,
                  val_loader=val_loader(teacher, val_images), label_map=teacher.label_map, runs=runs,
                  progress=progress, log=log, reuse=reuse)
    calibration_set = train_split(teacher, augment=False)
    fixed = teacher.profile == "embedded"
    slice_text = f"first {val_images} val images" if val_images else "full val"
    fp32 = None
    for part in parts:
        config = OrtQuantConfig(calibration_images=calibration_images, fixed_shape=fixed,
                                exclude=tuple(p for p in parts if p != part))
        quantized = quantize_for_study(study, teacher.model, calibration_set, f"teacher/only-{part}", config)
        if fp32 is None:
            fp32 = study.measure(teacher.model, "quantization/sensitivity/ort-fp32", technique="baseline",
                                 runtime="onnxruntime", core=OnnxCore(quantized.fp32_path, threads=study.threads),
                                 variant=f"fp32 core ({slice_text})")
        study.measure(teacher.model, f"quantization/sensitivity/only-{part}", technique="static_ptq",
                      runtime="onnxruntime", core=OnnxCore(quantized.int8_path, threads=study.threads),
                      baseline=fp32["id"], variant=f"only {part} int8 ({slice_text})",
                      config={"sensitivity_part": part, **quantized.as_dict()})
    ranked = sorted(parts, key=lambda p: study.records_by_id[f"quantization/sensitivity/only-{p}"]["map"])
    worst = ranked[0]
    config = OrtQuantConfig(calibration_images=calibration_images, fixed_shape=fixed, exclude=(worst,))
    quantized = quantize_for_study(study, teacher.model, calibration_set, "teacher/all-but-worst", config)
    study.measure(teacher.model, "quantization/sensitivity/all-but-worst", technique="static_ptq",
                  runtime="onnxruntime", core=OnnxCore(quantized.int8_path, threads=study.threads),
                  baseline=fp32["id"], variant=f"all int8 except {worst} ({slice_text})",
                  config={"float_parts": [worst], **quantized.as_dict()})
    quantized = quantize_for_study(study, teacher.model, calibration_set, "teacher/all-int8",
                                   OrtQuantConfig(calibration_images=calibration_images, fixed_shape=fixed))
    study.measure(teacher.model, "quantization/sensitivity/all-int8", technique="static_ptq",
                  runtime="onnxruntime", core=OnnxCore(quantized.int8_path, threads=study.threads),
                  baseline=fp32["id"], variant=f"every part int8 ({slice_text})", config=quantized.as_dict())
    return study


def quantization_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                       calibration_images: int = 64, sweep: bool = True, progress: bool = False,
                       log: Callable[[str], None] | None = None, reuse: ReuseCache | None = None) -> Study:
    """Every record of lesson 03 (see the module docstring), for ``compresskit reproduce``."""
    teacher = load_for_study("teacher", profile)
    study = Study(lesson=LESSON, model="teacher", profile=teacher.profile,
                  val_loader=val_loader(teacher, val_images), label_map=teacher.label_map, runs=runs,
                  progress=progress, log=log, reuse=reuse)
    calibration_set = train_split(teacher, augment=False)
    fixed = teacher.profile == "embedded"  # COCO images keep their own sizes: a free-shape core
    config = OrtQuantConfig(calibration_images=calibration_images, fixed_shape=fixed)
    study.measure(teacher.model, "quantization/teacher/eager", technique="baseline", variant="fp32 teacher")
    measure_dynamic_and_fp16(study, teacher.model)
    fp32, _ = measure_ort_pair(study, teacher.model, calibration_set, "teacher", config, variant="teacher, ")
    signed = OrtQuantConfig(calibration_images=calibration_images, activations="int8", fixed_shape=fixed)
    measure_int8_only(study, teacher.model, calibration_set, "teacher/int8-activations", signed, fp32["id"],
                      "QDQ int8 with signed int8 activations (the pitfall)")
    measure_openvino_pair(study, teacher.model, calibration_set, "teacher", calibration_images, fp32["id"],
                          variant="teacher, ")
    if teacher.profile == "embedded":
        bnhead = load_for_study("teacher_bnhead", teacher.profile).model
        measure_ort_pair(study, bnhead, calibration_set, "teacher_bnhead", config, fp32_baseline=fp32["id"],
                         int8_baseline=fp32["id"], variant="BatchNorm head (fine-tuned, folded), ",
                         model="teacher_bnhead")
        # Against the GroupNorm teacher's ORT fp32, as its ORT int8 is: the model it replaces.
        measure_openvino_pair(study, bnhead, calibration_set, "teacher_bnhead", calibration_images, fp32["id"],
                              variant="BatchNorm head (fine-tuned, folded), ", model="teacher_bnhead")
        pruned = load_for_study("teacher_pruned", teacher.profile).model
        pruned_fp32, _ = measure_ort_pair(study, pruned, calibration_set, "teacher_pruned", config,
                                          fp32_baseline=fp32["id"], variant="pruned teacher, ",
                                          model="teacher_pruned")
        measure_openvino_pair(study, pruned, calibration_set, "teacher_pruned", calibration_images,
                              pruned_fp32["id"], variant="pruned teacher, ", model="teacher_pruned")
        measure_pt2e(study, teacher.model, calibration_set, calibration_images=calibration_images,
                     recorded_qat=True)
    student = load_for_study("student", teacher.profile)
    student_calibration = train_split(student, augment=False)
    student_fp32, _ = measure_ort_pair(study, student.model, student_calibration, "student", config,
                                       fp32_baseline=fp32["id"], variant="student, ", model="student")
    measure_openvino_pair(study, student.model, student_calibration, "student", calibration_images,
                          student_fp32["id"], variant="student, ", model="student")
    if sweep:
        calibration_sweep(study, teacher.model, calibration_set, fp32["id"])
    return study
