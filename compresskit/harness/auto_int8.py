"""Every int8 path of the kit behind one call, and ``auto``: the fastest int8 runtime *on this CPU* whose mAP stays
within a budget, picked from a measurement rather than assumed.

Which int8 runtime wins depends on the CPU (VNNI or not, AMX or not) and on the detector (a GroupNorm head left in
float, depthwise convolutions), so the kit measures instead of guessing: every registered int8 path quantizes the
same detector on the same calibration images, and each int8 core is timed in interleaved pairs against **one**
fp32 yardstick (the detector's ONNX Runtime fp32 core, or the teacher's in a pipeline) and evaluated by the same
evaluator. :func:`choose_int8` then keeps the candidates within the mAP budget and picks the fastest; its
:class:`AutoChoice` goes into the chosen record's config, so the record says what was picked and why (every
candidate's measured speed-up, interval and mAP drop).

A new int8 runtime joins with :func:`register_int8_path`; ``auto`` then measures it too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from compresskit.errors import ConfigError

AUTO = "auto"  # the --runtime value that asks for the choice


@dataclass(frozen=True)
class Int8Build:
    """One int8 core built by an int8 path, ready for ``Study.measure``.

    Attributes:
        runtime: the registered runtime that runs ``core`` (the records' ``runtime``).
        label: short name in record ids and file names (``ort``, ``ov``, ``pt2e``).
        core: the int8 core. artifact: what ships, measured for size (a path, the IR's two files, bytes).
        files: the files written for it (empty when the artifact is bytes not yet written).
        variant: how it was made, for the record. details: the quantizer's settings and findings.
    """

    runtime: str
    label: str
    core: Any
    artifact: Any
    files: tuple[Path, ...]
    variant: str
    details: dict


@dataclass(frozen=True)
class Int8Settings:
    """What every int8 path is given, so the candidates of one choice are made alike.

    Attributes:
        calibration_images: train images that calibrate the activation ranges (the same images on every path).
        seed: picks those images. threads: the inference threads of the cores.
        any_shape: the cores must run images of any size (own datasets: each image keeps its aspect ratio);
            paths whose core is fixed to one input shape are then left out.
        keep_float: parts kept in float (kit part names or ONNX node-name prefixes, e.g. ``/head/``, as the
            quantizers' ``exclude``); paths that cannot keep a part in float are then left out.
    """

    calibration_images: int = 64
    seed: int = 0
    threads: int = 2
    any_shape: bool = False
    keep_float: tuple[str, ...] = ()


@dataclass(frozen=True)
class Int8Path:
    """A registered int8 path: ``build(detector, calibration split, output path without suffix, settings)`` ->
    :class:`Int8Build`; ``label`` names its records and files; ``any_shape`` says whether its core runs any
    input size; ``keeps_float`` whether it honours ``Int8Settings.keep_float``."""

    runtime: str
    label: str
    build: Callable[[nn.Module, Any, Path, Int8Settings], Int8Build]
    any_shape: bool
    keeps_float: bool = True


_INT8_PATHS: dict[str, Int8Path] = {}


def register_int8_path(runtime: str, label: str, build: Callable[[nn.Module, Any, Path, Int8Settings], Int8Build],
                       any_shape: bool = True, keeps_float: bool = True) -> None:
    """Make ``build`` the int8 path of registered runtime ``runtime`` (records ``.../<label>-int8``); ``auto``
    measures every registered path."""
    from compresskit.runtimes import get_runtime

    get_runtime(runtime)  # an unknown name: one message listing the registered runtimes
    _INT8_PATHS[runtime] = Int8Path(runtime, label, build, any_shape, keeps_float)


def int8_runtimes(any_shape: bool = False, keep_float: bool = False) -> tuple[str, ...]:
    """The runtimes that have an int8 path, in registration order; with ``any_shape`` only those whose core runs
    any input size, with ``keep_float`` only those that can keep parts in float."""
    return tuple(runtime for runtime, path in _INT8_PATHS.items()
                 if (path.any_shape or not any_shape) and (path.keeps_float or not keep_float))


def int8_path(runtime: str) -> Int8Path:
    """The int8 path registered for ``runtime``, or one message naming the runtimes that have one."""
    if runtime not in _INT8_PATHS:
        raise ConfigError(f"no int8 path for runtime {runtime!r}; the runtimes with one are "
                          f"{', '.join(int8_runtimes())}")
    return _INT8_PATHS[runtime]


def _onnxruntime(detector, calibration_set, out_stem: Path, settings: Int8Settings) -> Int8Build:
    from compresskit.quantize.ort import OrtQuantConfig, quantize_core_onnx
    from compresskit.runtimes import OnnxCore

    config = OrtQuantConfig(calibration_images=settings.calibration_images, seed=settings.seed,
                            fixed_shape=not settings.any_shape, exclude=settings.keep_float)
    quantized = quantize_core_onnx(detector, calibration_set, config,
                                   out_stem.with_name(out_stem.name + "-ort-int8.onnx"))
    return Int8Build("onnxruntime", "ort", OnnxCore(quantized.int8_path, threads=settings.threads),
                     quantized.int8_path, (quantized.int8_path,), f"QDQ int8 (ONNX Runtime), {quantized.activations} "
                     f"activations, {quantized.calibration_images} calibration images", quantized.as_dict())


def _openvino(detector, calibration_set, out_stem: Path, settings: Int8Settings) -> Int8Build:
    from compresskit.quantize.openvino import OpenVinoQuantConfig, quantize_core_openvino
    from compresskit.runtimes import OpenVinoCore

    config = OpenVinoQuantConfig(calibration_images=settings.calibration_images, seed=settings.seed,
                                 exclude=settings.keep_float)
    quantized = quantize_core_openvino(detector, calibration_set, config,
                                       out_stem.with_name(out_stem.name + "-ov-int8.xml"))
    core = OpenVinoCore(quantized.int8_path, threads=settings.threads)
    return Int8Build("openvino", "ov", core, core.files, core.files,
                     f"NNCF int8 (OpenVINO, {config.preset} preset), {quantized.calibration_images} calibration "
                     "images", quantized.as_dict())


def _torch_compile(detector, calibration_set, out_stem: Path, settings: Int8Settings) -> Int8Build:
    from compresskit.quantize.pt2e import Pt2eConfig, quantize_pt2e

    core = quantize_pt2e(detector, calibration_set, Pt2eConfig(calibration_images=settings.calibration_images,
                                                               seed=settings.seed))
    details = {key: value for key, value in core.summary.items() if key != "lowered"}
    return Int8Build("torch-compile", "pt2e", core, core.artifact_bytes(), (),
                     f"torchao PT2E int8, X86 Inductor quantizer, torch.compile, {settings.calibration_images} "
                     "calibration images", {**dataclasses.asdict(core.config), **details,
                                            "compile_seconds": round(core.compile_seconds or 0.0, 1)})


register_int8_path("onnxruntime", "ort", _onnxruntime)
register_int8_path("openvino", "ov", _openvino)
# The PT2E graph is exported at one input shape (see quantize.pt2e.Pt2eCore): images of other sizes do not run;
# and the kit's PT2E path quantizes every part the X86 Inductor quantizer annotates (no parts kept in float).
register_int8_path("torch-compile", "pt2e", _torch_compile, any_shape=False, keeps_float=False)


@dataclass(frozen=True)
class Candidate:
    """One int8 runtime as ``auto`` saw it: its record and what it measured against the yardstick."""

    runtime: str
    record: str
    speedup: float
    interval: tuple[float, float] | None
    map_drop_points: float

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "record": self.record, "speedup": round(self.speedup, 4),
                "interval": None if self.interval is None else [round(value, 4) for value in self.interval],
                "map_drop_points": round(self.map_drop_points, 3)}


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` picked and why. ``picked`` is None when no candidate kept its mAP within the budget."""

    picked: str | None
    yardstick: str
    max_map_drop_points: float
    candidates: tuple[Candidate, ...]
    accuracy_reference: str | None = None  # the record mAP drops are taken against; None: the yardstick

    @property
    def picked_candidate(self) -> Candidate | None:
        return next((candidate for candidate in self.candidates if candidate.runtime == self.picked), None)

    def reason(self) -> str:
        """One sentence: the pick, its numbers, and each other candidate's."""
        def numbers(candidate: Candidate) -> str:
            interval = ("" if candidate.interval is None
                        else f" [{candidate.interval[0]:.2f}-{candidate.interval[1]:.2f}]")
            drop = candidate.map_drop_points
            return f"x{candidate.speedup:.2f}{interval}, " + (f"{drop:.2f} mAP points lost" if drop >= 0
                                                              else f"{-drop:.2f} mAP points gained")

        others = "; ".join(f"{candidate.runtime} {numbers(candidate)}"
                           + ("" if candidate.map_drop_points <= self.max_map_drop_points else " (over budget)")
                           for candidate in self.candidates if candidate.runtime != self.picked)
        against = f"speed against {self.yardstick}, paired, same run"
        budget = f"{self.max_map_drop_points:g} mAP points of {self.accuracy_reference or self.yardstick}"
        chosen = self.picked_candidate
        if chosen is None:
            return f"no int8 runtime stayed within {budget} ({against}): {others}"
        return (f"{chosen.runtime} is the fastest int8 runtime within {budget} ({numbers(chosen)}; {against})"
                + (f"; {others}" if others else ""))

    def as_dict(self) -> dict:
        return {"picked": self.picked, "yardstick": self.yardstick,
                "accuracy_reference": self.accuracy_reference or self.yardstick,
                "max_map_drop_points": self.max_map_drop_points,
                "candidates": [candidate.as_dict() for candidate in self.candidates], "reason": self.reason()}


def check_budget(max_map_drop_points: float) -> float:
    """``max_map_drop_points`` if it is a budget in mAP points above 0 and at most 100, else one message."""
    if not isinstance(max_map_drop_points, (int, float)) or not 0 < max_map_drop_points <= 100:
        raise ConfigError(f"the mAP budget is in points of the 0-100 scale, above 0 and at most 100 (e.g. 1.0), "
                          f"got {max_map_drop_points!r}")
    return float(max_map_drop_points)


def choose_int8(records: Iterable[Mapping[str, Any]], yardstick: Mapping[str, Any], max_map_drop_points: float,
                accuracy_reference: Mapping[str, Any] | None = None) -> AutoChoice:
    """The fastest of ``records`` (int8 records timed against ``yardstick``) whose mAP is at most
    ``max_map_drop_points`` below ``accuracy_reference``'s (default: the yardstick's). Speed is the paired
    speed-up's median; a tie goes to the smaller mAP drop. Pure: reads the records only."""
    from compresskit.report import compare

    budget = check_budget(max_map_drop_points)
    reference = yardstick if accuracy_reference is None else accuracy_reference
    if reference.get("map") is None:
        raise ConfigError(f"record {reference.get('id')!r} has no mAP to hold the int8 candidates to")
    candidates = []
    for record in records:
        ratios = compare(record, yardstick)
        if ratios["latency_speedup"] is None or record.get("map") is None:
            raise ConfigError(f"record {record['id']!r} has no paired latency or mAP against {yardstick['id']!r}")
        candidates.append(Candidate(record["runtime"], record["id"], float(ratios["latency_speedup"]),
                                    None if ratios["latency_interval"] is None else tuple(ratios["latency_interval"]),
                                    (reference["map"] - record["map"]) * 100.0))
    within = [candidate for candidate in candidates if candidate.map_drop_points <= budget]
    best = max(within, key=lambda candidate: (candidate.speedup, -candidate.map_drop_points), default=None)
    return AutoChoice(None if best is None else best.runtime, yardstick["id"], budget, tuple(candidates),
                      None if accuracy_reference is None else accuracy_reference["id"])


def measure_int8_candidates(study, detector: nn.Module, calibration_set, out_stem: Path | str, yardstick: str,
                            record_prefix: str, *, runtimes: Iterable[str] | None = None,
                            settings: Int8Settings | None = None, technique: str = "static_ptq",
                            model: str | None = None, variant: str = "", config: Mapping[str, Any] | None = None,
                            log: Callable[[str], None] | None = None) -> list[tuple[dict, Int8Build | None]]:
    """Each int8 path (``runtimes``, default every registered one that fits ``settings.any_shape``) quantizes
    ``detector``, and its core is measured by ``study`` as record ``<record_prefix>/<label>-int8`` against
    ``yardstick`` (a record of the study). A record an interrupted run of the study finished is kept as it is,
    without quantizing again (its build is then None). Returns ``(record, build)`` pairs in the order measured."""
    settings = settings or Int8Settings(threads=study.threads)
    measured = []
    for runtime in runtimes or int8_runtimes(any_shape=settings.any_shape, keep_float=bool(settings.keep_float)):
        path = int8_path(runtime)
        if settings.keep_float and not path.keeps_float:
            raise ConfigError(f"the {runtime} int8 path cannot keep {', '.join(settings.keep_float)} in float; the "
                              f"runtimes that can are {', '.join(int8_runtimes(keep_float=True))}")
        record_id = f"{record_prefix}/{path.label}-int8"
        if study.is_kept(record_id):
            measured.append((study.keep(record_id), None))
            continue
        if log is not None:
            log(f"  int8 for {runtime} ...")
        build = path.build(detector, calibration_set, Path(out_stem), settings)
        record = study.measure(detector, record_id, technique=technique, runtime=build.runtime, core=build.core,
                               artifact=build.artifact, baseline=yardstick, model=model,
                               variant=f"{variant}{build.variant}",
                               config={**(config or {}), "quantization": build.details})
        measured.append((record, build))
    return measured


def mark_choice(record: dict, choice: AutoChoice) -> dict:
    """``record`` (the picked candidate's) with the choice in its config: ``config.auto`` and ``chosen: true``."""
    record["config"] = {**(record.get("config") or {}), "chosen": True, "auto": choice.as_dict()}
    return record


def measure_auto(study, detector: nn.Module, calibration_set, out_stem: Path | str, yardstick: str,
                 record_prefix: str, max_map_drop_points: float, *, accuracy_reference: str | None = None,
                 chosen_id: str | None = None, **candidates: Any) -> tuple[AutoChoice, dict | None]:
    """:func:`measure_int8_candidates`, then :func:`choose_int8` against the study's ``yardstick`` record (and its
    ``accuracy_reference`` record for the budget, default the yardstick). The picked record is marked
    (:func:`mark_choice`) and, with ``chosen_id``, renamed to it, so a pipeline's stage keeps one id whichever
    runtime wins; with the study's ``on_record``, the marked record is written again. ``candidates`` are
    :func:`measure_int8_candidates`'s keyword arguments.

    Returns:
        The choice and the picked record (None when no candidate stayed within the budget).
    """
    measured = measure_int8_candidates(study, detector, calibration_set, out_stem, yardstick, record_prefix,
                                       **candidates)
    records = [record for record, _ in measured]
    by_id = study.records_by_id
    choice = choose_int8(records, by_id[yardstick], max_map_drop_points,
                         None if accuracy_reference is None else by_id[accuracy_reference])
    picked = next((record for record in records if record["runtime"] == choice.picked), None)
    if picked is not None:
        mark_choice(picked, choice)
        if chosen_id is not None:
            picked["id"] = chosen_id
        if study.on_record is not None:
            study.on_record(picked)
    if study.log is not None:
        study.log(f"  auto: {choice.reason()}")
    return choice, picked
