"""``compresskit quantize``: its arguments, what it runs, and what it prints.

Static int8 of one detector's core, written as the artifact a user ships and measured against the fp32 core of
the same runtime in the same run: ONNX Runtime QDQ (``--runtime onnxruntime``), NNCF for OpenVINO
(``--runtime openvino``) or torchao PT2E lowered by ``torch.compile`` (``--runtime torch-compile``, also spelled
``torchao`` after its quantizer); ``--runtime auto`` measures them all against ONNX Runtime's fp32 core and ships
the fastest within a mAP budget (``harness.auto_int8``). Only the standard library loads at the top, so
``compresskit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compresskit.cli.arguments import LazyChoices, positive_int

if TYPE_CHECKING:
    from compresskit.harness.loading import Loaded

QUANTIZE_PRESETS = ("teacher", "student", "teacher_pruned", "teacher_bnhead")
ACCURACY_CONTROL_MAX_DROP = 0.3  # mAP points NNCF's accuracy control may lose by default
AUTO_MAX_DROP = 1.0  # mAP points the automatic choice allows by default, against the fp32 core


@dataclass(frozen=True)
class Int8Files:
    """What a file-based int8 path wrote: the float and int8 artifacts of one core (each runs as a core of the
    path's runtime: ``get_runtime(runtime).core_from_artifact(path)``), how to describe the int8 record, and the
    quantizer's details for its config and the summary."""

    fp32: Path
    int8: Path
    variant: str
    details: dict
    label: str  # the records' short runtime name: quantize/<preset>/<label>-int8


@dataclass(frozen=True)
class Int8Request:
    """What ``compresskit quantize`` asks of a file-based int8 path."""

    preset: str
    calibration_images: int
    method: str
    fixed_shape: bool
    max_drop_points: float | None = None  # accuracy control's budget (openvino); None: plain post-training
    validation: Any = None  # (val split, label map, images) for accuracy control


def _onnxruntime_int8(detector, calibration_set, out: Path, request: Int8Request) -> Int8Files:
    from compresskit.errors import ConfigError
    from compresskit.quantize.ort import OrtQuantConfig, quantize_core_onnx

    if request.max_drop_points is not None:
        raise ConfigError("accuracy control is NNCF's: add --runtime openvino, or drop --accuracy-control")
    config = OrtQuantConfig(calibration_images=request.calibration_images, method=request.method,
                            fixed_shape=request.fixed_shape)
    quantized = quantize_core_onnx(detector, calibration_set, config, out / f"{request.preset}-int8.onnx")
    return Int8Files(quantized.fp32_path, quantized.int8_path,
                     f"QDQ int8, {quantized.activations} activations, {request.method}, "
                     f"{quantized.calibration_images} calibration images", quantized.as_dict(), label="ort")


def _openvino_int8(detector, calibration_set, out: Path, request: Int8Request) -> Int8Files:
    from compresskit.errors import ConfigError
    from compresskit.quantize.openvino import (OpenVinoQuantConfig, quantize_core_openvino,
                                               quantize_core_openvino_with_accuracy_control)

    if request.method != "minmax":
        raise ConfigError("--method chooses ONNX Runtime's calibrator; NNCF calibrates with its own statistics "
                          "(min-max activations, then bias correction): drop --method with --runtime openvino")
    config = OpenVinoQuantConfig(calibration_images=request.calibration_images)
    path = out / f"{request.preset}-int8.xml"
    if request.max_drop_points is None:
        quantized = quantize_core_openvino(detector, calibration_set, config, path)
        how = "NNCF int8"
    else:
        val_set, label_map, images = request.validation
        quantized = quantize_core_openvino_with_accuracy_control(
            detector, calibration_set, val_set, label_map, config, path, max_drop_points=request.max_drop_points,
            validation_images=images)
        parts = ", ".join(f"{count} in {part}" for part, count in quantized.as_dict()["reverted_parts"].items())
        how = (f"NNCF int8 with accuracy control (at most {request.max_drop_points:g} mAP points lost on "
               f"{images} val images; {len(quantized.reverted_ops)} operations back to float"
               + (f": {parts})" if parts else ")"))
    return Int8Files(quantized.fp32_path, quantized.int8_path,
                     f"{how}, {config.preset} preset, {quantized.calibration_images} calibration images",
                     quantized.as_dict(), label="ov")


# Runtimes whose int8 is a file written by a post-training quantizer: runtime -> what writes it. The PT2E path
# (torch-compile, also called torchao after its quantizer) compiles in the process instead: torchao_command.
FILE_INT8: dict[str, Callable[..., Int8Files]] = {"onnxruntime": _onnxruntime_int8, "openvino": _openvino_int8}
# --runtime value -> the int8 path that serves it; "torchao" is the PT2E path's own name (the summary's runtime).
INT8_PATHS = {**{runtime: runtime for runtime in FILE_INT8}, "torch-compile": "torchao", "torchao": "torchao"}


def runtime_choices() -> tuple[str, ...]:
    """What ``--runtime`` accepts: every registered runtime (one without an int8 path here is refused with a
    message when the command runs), ``torchao``, the PT2E path's own name, and ``auto``."""
    from compresskit.runtimes import runtime_names

    return (*runtime_names(), "torchao", "auto")


def add_quantize_command(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """The ``quantize`` sub-command and its options; ``command`` makes a sub-parser as the others are made."""
    quantize = command(commands, "quantize", "static int8 of a detector's core; artifact + measured summary",
                       _quantize, description="Calibrate on N train images, write the int8 core (an ONNX file for "
                                              "onnxruntime, an OpenVINO IR for openvino, a torch.export program "
                                              "for torchao; the fp32 one beside it) and a JSON summary: size, mAP "
                                              "(0-1) and latency of int8 against fp32 in the same runtime, "
                                              "measured in the same run.")
    quantize.add_argument("--preset", choices=QUANTIZE_PRESETS, default="teacher",
                          help="which detector (teacher_bnhead: the BatchNorm deployment head)")
    quantize.add_argument("--checkpoint", type=Path, help="a checkpoint of that preset (default: the shipped one)")
    quantize.add_argument("--runtime", choices=LazyChoices("compresskit.cli.quantize", "runtime_choices"),
                          default="onnxruntime", metavar="RUNTIME",
                          help="a registered runtime, one of %(choices)s; int8 is written for onnxruntime (QDQ), "
                               "openvino (NNCF post-training quantization) and torch-compile (torchao PT2E lowered "
                               "by torch.compile, also spelled torchao); auto quantizes for each of them, times "
                               "every int8 core against ONNX Runtime's fp32 core in the same run and ships the "
                               "fastest within --max-drop mAP points")
    quantize.add_argument("--qat-steps", type=positive_int, default=None,
                          help="torchao only: also fine-tune quantization-aware for this many steps of batch 16 "
                               "(default: post-training quantization only)")
    quantize.add_argument("--calibration-images", type=positive_int, default=64,
                          help="train images used for calibration (never more than the train split holds)")
    quantize.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                          help="calibration method (onnxruntime only)")
    quantize.add_argument("--accuracy-control", action="store_true",
                          help="openvino only: NNCF's accuracy control, which returns operations to float until "
                               "int8 loses at most --max-drop mAP points on --accuracy-images val images (default: "
                               "plain post-training quantization)")
    quantize.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                          help="the budget in mAP points (0-100 scale), above 0: of --accuracy-control (default: "
                               "0.3), or of --runtime auto against the fp32 core (default: 1.0)")
    quantize.add_argument("--accuracy-images", type=positive_int, default=50,
                          help="with --accuracy-control: the val images it measures on (the first N)")
    quantize.add_argument("--runs", type=positive_int, default=30, help="timed latency pairs")
    quantize.add_argument("--out", type=Path, default=Path("runs/quantize"), help="folder for the artifacts")


def _quantize(args: argparse.Namespace) -> int:
    from compresskit.errors import ConfigError

    auto = args.runtime == "auto"
    if args.max_drop is not None and not (args.accuracy_control or auto):
        raise ConfigError("--max-drop is a budget of accuracy control or of the automatic choice: add "
                          "--accuracy-control (with --runtime openvino) or --runtime auto")
    default_drop = AUTO_MAX_DROP if auto else ACCURACY_CONTROL_MAX_DROP
    max_drop = (default_drop if args.max_drop is None else args.max_drop) if args.accuracy_control or auto else None
    summary = quantize_command(args.preset, args.out, checkpoint=args.checkpoint, runtime=args.runtime,
                               calibration_images=args.calibration_images, method=args.method, runs=args.runs,
                               qat_steps=args.qat_steps or 0, max_drop_points=max_drop,
                               accuracy_images=args.accuracy_images, accuracy_control=args.accuracy_control)
    if summary["runtime"] == "auto":
        return _print_auto(summary, Path(args.out))
    if summary["runtime"] == "torchao":
        for key in ("ptq", "qat"):
            if key in summary["artifacts"]:
                low, high = summary["paired_latency"][key]["interval"]
                print(f"{summary['artifacts'][key]}: mAP (0-1) {summary['map']['fp32']:.4f} -> "
                      f"{summary['map'][key]:.4f}, x{summary['paired_latency'][key]['speedup']:.2f} "
                      f"[{low:.2f}-{high:.2f}] faster than the compiled fp32 core (paired, same run)")
        print(f"summary written to {Path(args.out) / (summary['preset'] + '-int8.json')}")
        return 0
    paired = summary["paired_latency"]
    print(f"{summary['artifact']}: {summary['size_ratio']:.2f}x smaller than fp32, mAP (0-1) "
          f"{summary['map']['fp32']:.4f} -> {summary['map']['int8']:.4f}, x{paired['speedup']:.2f} "
          f"[{paired['interval'][0]:.2f}-{paired['interval'][1]:.2f}] faster than the fp32 core (paired, same run)")
    print(f"summary written to {Path(args.out) / (summary['preset'] + '-int8.json')}")
    return 0


def _print_auto(summary: dict, out: Path) -> int:
    auto = summary["auto"]
    for candidate in auto["candidates"]:
        low, high = candidate["interval"] or (float("nan"), float("nan"))
        mark = "  <- picked" if candidate["runtime"] == auto["picked"] else ""
        print(f"{candidate['runtime']:>14}: x{candidate['speedup']:.2f} [{low:.2f}-{high:.2f}] faster than "
              f"{auto['yardstick']}, {candidate['map_drop_points']:+.2f} mAP points{mark}")
    print(auto["reason"])
    print(f"summary written to {out / (summary['preset'] + '-int8.json')}")
    if auto["picked"] is None:
        print(f"no int8 core within {auto['max_map_drop_points']:g} mAP points: raise --max-drop, or ship the fp32 "
              "core", file=sys.stderr)
        return 1
    print(f"ship {summary['artifact']}")
    return 0


ARTIFACT_SUFFIXES = (".onnx", ".xml", ".bin", ".pt2")  # what an int8 path writes


def _refuse_files_not_ours(out: Path, preset: str) -> None:
    """One message when ``out`` holds a model file under one of this command's names but no summary of an earlier
    ``compresskit quantize`` run (``<preset>-int8.json``): the files are someone else's, and writing would replace
    them. A folder an earlier run wrote is the kit's: its files are replaced, as a rerun should."""
    from compresskit.errors import ConfigError

    if not out.is_dir():
        return
    ours = out / f"{preset}-int8.json"
    if ours.is_file():
        try:
            import json

            if isinstance(json.loads(ours.read_text()), dict):
                return
        except (OSError, UnicodeDecodeError, ValueError):
            pass
    found = sorted(path.name for path in out.iterdir()
                   if path.name.startswith(f"{preset}-") and path.suffix in ARTIFACT_SUFFIXES)
    if found:
        raise ConfigError(f"{out} already holds {', '.join(found[:3])}{' ...' if len(found) > 3 else ''} but no "
                          f"summary of compresskit quantize ({ours.name}): these files are not the kit's, and "
                          "writing here would replace them; choose another --out, or move them away")


def _int8_path(runtime: str) -> str:
    from compresskit.errors import ConfigError
    from compresskit.runtimes import get_runtime

    if runtime == "auto":
        return runtime
    if runtime not in INT8_PATHS:
        get_runtime(runtime)  # an unknown name: the error lists the registered runtimes
        raise ConfigError(f"compresskit quantize has no int8 path for runtime {runtime!r}; use onnxruntime (QDQ), "
                          "openvino (NNCF) or torch-compile (torchao PT2E)")
    return INT8_PATHS[runtime]


def quantize_command(preset: str, out, *, checkpoint=None, runtime: str = "onnxruntime",
                     calibration_images: int = 64, method: str = "minmax", runs: int = 30,
                     val_images: int | None = None, qat_steps: int = 0, max_drop_points: float | None = None,
                     accuracy_images: int = 50, accuracy_control: bool | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """``compresskit quantize``: write the int8 artifact of a detector and a JSON summary measured against the
    fp32 core of the same runtime, in the same run (size, mAP, paired latency), plus their results records.

    ``runtime="torch-compile"`` (or ``"torchao"``) quantizes with PT2E and lowers with ``torch.compile`` (see
    :func:`torchao_command`); ``qat_steps`` adds a quantization-aware fine-tune of that many steps there.
    ``runtime="openvino"`` with ``max_drop_points`` runs NNCF's accuracy control: operations go back to float until
    int8 loses at most that many mAP points on the first ``accuracy_images`` val images. ``runtime="auto"`` builds
    every int8 path, times each int8 core against ONNX Runtime's fp32 core and ships the fastest whose mAP is at
    most ``max_drop_points`` (default 1.0) below it (:func:`auto_command`). ``accuracy_control`` says the budget
    is accuracy control's (default: for ``openvino``, whenever ``max_drop_points`` is given).

    Returns:
        The summary written to ``out/<preset>-int8.json``.
    """
    from compresskit.data.files import atomic_write_json
    from compresskit.errors import ConfigError
    from compresskit.harness import Study, load_for_study, train_split, val_loader
    from compresskit.report import compare, write_records
    from compresskit.runtimes import get_runtime

    path = _int8_path(runtime)
    if accuracy_control is None:
        accuracy_control = max_drop_points is not None and path != "auto"
    if qat_steps and path != "torchao":
        raise ConfigError("quantization-aware training runs with torchao PT2E: add --runtime torchao")
    if accuracy_control and path != "openvino":
        raise ConfigError("accuracy control is NNCF's: add --runtime openvino, or drop --accuracy-control")
    if path == "auto" and method != "minmax":
        raise ConfigError("--runtime auto calibrates every runtime the same way (min-max): drop --method")
    if max_drop_points is not None and not 0 < max_drop_points <= 100:
        raise ConfigError(f"--max-drop is the mAP points int8 may lose, above 0 and at most 100 (e.g. 0.3), got "
                          f"{max_drop_points:g}")
    if preset not in QUANTIZE_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(QUANTIZE_PRESETS)}")
    out = Path(out)
    _refuse_files_not_ours(out, preset)
    loaded = load_for_study(preset, checkpoint=checkpoint)
    if path == "auto":
        return auto_command(loaded, out, checkpoint=checkpoint, calibration_images=calibration_images, runs=runs,
                            val_images=val_images, max_drop_points=AUTO_MAX_DROP if max_drop_points is None
                            else max_drop_points, log=log)
    if path == "torchao":
        return torchao_command(loaded, out, checkpoint=checkpoint, calibration_images=calibration_images, runs=runs,
                               val_images=val_images, qat_steps=qat_steps, log=log)
    detector = loaded.model
    study = Study(lesson="quantize_command", model=preset, profile=loaded.profile,
                  val_loader=val_loader(loaded, val_images), label_map=loaded.label_map, runs=runs, log=log)
    calibration_set = train_split(loaded, augment=False)
    log(f"calibrating on {calibration_images} train images and quantizing {preset} for {path} ...")
    request = Int8Request(preset=preset, calibration_images=calibration_images, method=method,
                          fixed_shape=loaded.profile == "embedded", max_drop_points=max_drop_points,
                          validation=(study.val_loader.dataset, loaded.label_map, accuracy_images))
    files = FILE_INT8[path](detector, calibration_set, out, request)
    runtime_of_files = get_runtime(path)
    fp32 = study.measure(detector, f"quantize/{preset}/{files.label}-fp32", technique="baseline", runtime=path,
                         core=runtime_of_files.core_from_artifact(files.fp32, threads=study.threads),
                         variant="fp32 core")
    int8 = study.measure(detector, f"quantize/{preset}/{files.label}-int8", technique="static_ptq", runtime=path,
                         core=runtime_of_files.core_from_artifact(files.int8, threads=study.threads),
                         baseline=fp32["id"], variant=files.variant, config=files.details)
    ratios = compare(int8, fp32)
    summary = {"preset": preset, "checkpoint": None if checkpoint is None else str(checkpoint), "runtime": path,
               "profile": loaded.profile, "artifact": str(files.int8), "fp32_artifact": str(files.fp32),
               "size_bytes": {"fp32": fp32["size_bytes"], "int8": int8["size_bytes"]},
               "size_ratio": round(ratios["size_ratio"], 4), "map": {"fp32": fp32["map"], "int8": int8["map"]},
               "map_drop_points": round(ratios["map_drop_points"], 3), "latency_ms": {
                   "fp32": fp32["latency_ms"], "int8": int8["latency_ms"]}, "paired_latency": int8["paired_latency"],
               "calibration_images": calibration_images, "method": method,
               **{key: files.details[key] for key in ("activations", "activation_reason") if key in files.details},
               "quantization": files.details}
    write_records(study.records, reports_dir=out)
    atomic_write_json(out / f"{preset}-int8.json", summary, indent=1)
    return summary


def torchao_command(loaded: "Loaded", out, *, checkpoint=None, calibration_images: int = 64, runs: int = 30,
                    val_images: int | None = None, qat_steps: int = 0,
                    log: Callable[[str], None] = print) -> dict:
    """The torchao side of ``compresskit quantize`` for ``loaded`` (see
    :func:`~compresskit.harness.load_for_study`): PT2E post-training int8 and, with ``qat_steps``, a QAT
    fine-tune of that many steps (batch 16, through the engine's loop), each against the fp32 core compiled the
    same way. Writes ``out/<preset>-pt2e-int8.pt2`` (and ``-qat-int8.pt2``: ``torch.export.load`` reads them), the
    records, and the summary ``out/<preset>-int8.json``, which is also a training record when QAT ran (command,
    environment, hardware, history, ``val_metrics`` of the QAT int8 core)."""
    from compresskit.data.files import atomic_write_bytes, atomic_write_json
    from compresskit.engine import METRIC_NAMES, console_command, training_device_name
    from compresskit.harness import Study, train_split, val_loader
    from compresskit.harness.quantization import measure_pt2e
    from compresskit.measure import environment_stamp
    from compresskit.quantize.qat import QatConfig, qat_finetune
    from compresskit.report import compare, write_records

    out = Path(out)
    preset, detector = loaded.name, loaded.model
    study = Study(lesson="quantize_command", model=preset, profile=loaded.profile,
                  val_loader=val_loader(loaded, val_images), label_map=loaded.label_map, runs=runs, log=log)
    log(f"calibrating on {calibration_images} train images and quantizing {preset} with torchao PT2E ...")
    fp32, ptq, ptq_bytes = measure_pt2e(study, detector, train_split(loaded, augment=False), calibration_images)
    records, artifacts = {"fp32": fp32, "ptq": ptq}, {"ptq": (out / f"{preset}-pt2e-int8.pt2", ptq_bytes)}
    qat_result = None
    if qat_steps:
        log(f"quantization-aware fine-tune: {qat_steps} steps of batch 16 ...")
        qat_config = QatConfig(max_iters_per_epoch=qat_steps)
        qat_result = qat_finetune(detector, train_split(loaded), out / f"{preset}-qat-run", qat_config)
        qat_bytes = qat_result.core.artifact_bytes()
        records["qat"] = study.measure(
            detector, f"quantization/{preset}/pt2e-qat-int8", technique="qat", runtime="torch-compile",
            core=qat_result.core, baseline=fp32["id"], artifact=qat_bytes,
            variant=f"torchao PT2E QAT, {qat_steps} steps, torch.compile", train_seconds=qat_result.train_seconds,
            config=qat_result.as_dict())
        artifacts["qat"] = (out / f"{preset}-qat-int8.pt2", qat_bytes)
    for path, payload in artifacts.values():
        atomic_write_bytes(path, payload)
    summary = {"preset": preset, "checkpoint": None if checkpoint is None else str(checkpoint), "runtime": "torchao",
               "profile": loaded.profile, "artifacts": {key: str(path) for key, (path, _) in artifacts.items()},
               "map": {key: record["map"] for key, record in records.items()},
               "map_drop_points": {key: round(compare(record, fp32)["map_drop_points"], 3)
                                   for key, record in records.items() if key != "fp32"},
               "size_bytes": {key: record["size_bytes"] for key, record in records.items()},
               "latency_ms": {key: record["latency_ms"] for key, record in records.items()},
               "paired_latency": {key: record["paired_latency"] for key, record in records.items() if key != "fp32"},
               "calibration_images": calibration_images}
    if qat_result is not None:
        summary.update(qat_result.as_dict())
        summary.update({"val_metrics": {key: records["qat"][key] for key in METRIC_NAMES},
                        "ptq_val_metrics": {key: ptq[key] for key in METRIC_NAMES},
                        "fp32_val_metrics": {key: fp32[key] for key in METRIC_NAMES},
                        "val_images": val_images, "trained_on": training_device_name(),
                        "command": console_command(), "environment": environment_stamp()})
    write_records(study.records, reports_dir=out)
    atomic_write_json(out / f"{preset}-int8.json", summary, indent=1)
    return summary


def auto_command(loaded: "Loaded", out, *, checkpoint=None, calibration_images: int = 64, runs: int = 30,
                 val_images: int | None = None, max_drop_points: float = AUTO_MAX_DROP,
                 log: Callable[[str], None] = print) -> dict:
    """``compresskit quantize --runtime auto`` for ``loaded``: the fp32 core in ONNX Runtime (the yardstick), then
    every int8 path's core (:func:`~compresskit.harness.auto_int8.measure_int8_candidates`) timed against it in
    the same run, and :func:`~compresskit.harness.auto_int8.choose_int8`'s pick, marked in its record
    (``config.chosen``, ``config.auto``). Every candidate's artifact stays in ``out``; the summary
    ``out/<preset>-int8.json`` names the one to ship (``artifact``; None when no candidate kept its mAP within
    ``max_drop_points``)."""
    from compresskit.data.files import atomic_write_bytes, atomic_write_json
    from compresskit.harness import Study, train_split, val_loader
    from compresskit.harness.auto_int8 import (Int8Settings, check_budget, choose_int8, mark_choice,
                                               measure_int8_candidates)
    from compresskit.report import compare, write_records

    budget = check_budget(max_drop_points)
    preset, detector = loaded.name, loaded.model
    study = Study(lesson="quantize_command", model=preset, profile=loaded.profile, artifacts=out,
                  val_loader=val_loader(loaded, val_images), label_map=loaded.label_map, runs=runs, log=log)
    log(f"automatic int8: quantizing {preset} for every int8 runtime on {calibration_images} train images and "
        "timing each against the ONNX Runtime fp32 core ...")
    yardstick = study.measure(detector, f"quantize/{preset}/ort-fp32", technique="baseline", runtime="onnxruntime",
                              variant="fp32 core, ONNX Runtime (the yardstick)")
    settings = Int8Settings(calibration_images=calibration_images, threads=study.threads,
                            any_shape=loaded.profile != "embedded")  # the embedded images share one size
    measured = measure_int8_candidates(study, detector, train_split(loaded, augment=False), out / preset,
                                       yardstick["id"], f"quantize/{preset}/auto", settings=settings, log=log)
    choice = choose_int8([record for record, _ in measured], yardstick, budget)
    shipped = {}
    for record, build in measured:
        if build.files:
            shipped[build.runtime] = build.files[0]
        else:  # bytes (a torch.export program): written here
            shipped[build.runtime] = atomic_write_bytes(out / f"{preset}-{build.label}-int8.pt2", build.artifact)
        if build.runtime == choice.picked:
            mark_choice(record, choice)
    picked = next((record for record, build in measured if build.runtime == choice.picked), None)
    summary = {"preset": preset, "checkpoint": None if checkpoint is None else str(checkpoint), "runtime": "auto",
               "profile": loaded.profile, "picked": choice.picked, "auto": choice.as_dict(),
               "artifact": None if picked is None else str(shipped[choice.picked]),
               "artifacts": {runtime: str(path) for runtime, path in shipped.items()},
               "calibration_images": calibration_images}
    if picked is not None:
        ratios = compare(picked, yardstick)
        summary.update({"size_bytes": {"fp32": yardstick["size_bytes"], "int8": picked["size_bytes"]},
                        "size_ratio": round(ratios["size_ratio"], 4),
                        "map": {"fp32": yardstick["map"], "int8": picked["map"]},
                        "map_drop_points": round(ratios["map_drop_points"], 3),
                        "paired_latency": picked["paired_latency"]})
    write_records(study.records, reports_dir=out)
    atomic_write_json(out / f"{preset}-int8.json", summary, indent=1)
    return summary
