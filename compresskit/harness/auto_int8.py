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


# (detector, calibration split, output path without suffix, calibration images, threads) -> the int8 core
Int8Path = Callable[[nn.Module, Any, Path, int, int], Int8Build]
_INT8_PATHS: dict[str, Int8Path] = {}


def register_int8_path(runtime: str, build: Int8Path) -> None:
    """Make ``build`` the int8 path of registered runtime ``runtime``; ``auto`` measures every registered path."""
    from compresskit.runtimes import get_runtime

    get_runtime(runtime)  # an unknown name: one message listing the registered runtimes
    _INT8_PATHS[runtime] = build


def int8_runtimes() -> tuple[str, ...]:
    """The runtimes that have an int8 path, in registration order."""
    return tuple(_INT8_PATHS)


def build_int8(runtime: str, detector: nn.Module, calibration_set, out_stem: Path | str, calibration_images: int,
               threads: int) -> Int8Build:
    """The int8 core of ``detector`` for ``runtime``, its files written beside ``out_stem`` (a path without
    suffix: each path adds its own)."""
    if runtime not in _INT8_PATHS:
        raise ConfigError(f"no int8 path for runtime {runtime!r}; the runtimes with one are "
                          f"{', '.join(int8_runtimes())}")
    return _INT8_PATHS[runtime](detector, calibration_set, Path(out_stem), calibration_images, threads)


def _onnxruntime(detector, calibration_set, out_stem: Path, calibration_images: int, threads: int) -> Int8Build:
    from compresskit.quantize.ort import OrtQuantConfig, quantize_core_onnx
    from compresskit.runtimes import OnnxCore

    quantized = quantize_core_onnx(detector, calibration_set, OrtQuantConfig(calibration_images=calibration_images),
                                   out_stem.with_name(out_stem.name + "-ort-int8.onnx"))
    return Int8Build("onnxruntime", "ort", OnnxCore(quantized.int8_path, threads=threads), quantized.int8_path,
                     (quantized.int8_path,), f"QDQ int8 (ONNX Runtime), {quantized.activations} activations, "
                     f"{quantized.calibration_images} calibration images", quantized.as_dict())


def _openvino(detector, calibration_set, out_stem: Path, calibration_images: int, threads: int) -> Int8Build:
    from compresskit.quantize.openvino import OpenVinoQuantConfig, quantize_core_openvino
    from compresskit.runtimes import OpenVinoCore

    config = OpenVinoQuantConfig(calibration_images=calibration_images)
    quantized = quantize_core_openvino(detector, calibration_set, config,
                                       out_stem.with_name(out_stem.name + "-ov-int8.xml"))
    core = OpenVinoCore(quantized.int8_path, threads=threads)
    return Int8Build("openvino", "ov", core, core.files, core.files,
                     f"NNCF int8 (OpenVINO, {config.preset} preset), {quantized.calibration_images} calibration "
                     "images", quantized.as_dict())


def _torch_compile(detector, calibration_set, out_stem: Path, calibration_images: int, threads: int) -> Int8Build:
    from compresskit.quantize.pt2e import Pt2eConfig, quantize_pt2e

    core = quantize_pt2e(detector, calibration_set, Pt2eConfig(calibration_images=calibration_images))
    details = {key: value for key, value in core.summary.items() if key != "lowered"}
    return Int8Build("torch-compile", "pt2e", core, core.artifact_bytes(), (),
                     f"torchao PT2E int8, X86 Inductor quantizer, torch.compile, {calibration_images} calibration "
                     "images", {**dataclasses.asdict(core.config), **details,
                                "compile_seconds": round(core.compile_seconds or 0.0, 1)})


register_int8_path("onnxruntime", _onnxruntime)
register_int8_path("openvino", _openvino)
register_int8_path("torch-compile", _torch_compile)


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

    @property
    def picked_candidate(self) -> Candidate | None:
        return next((candidate for candidate in self.candidates if candidate.runtime == self.picked), None)

    def reason(self) -> str:
        """One sentence: the pick, its numbers, and each other candidate's."""
        def numbers(candidate: Candidate) -> str:
            interval = ("" if candidate.interval is None
                        else f" [{candidate.interval[0]:.2f}-{candidate.interval[1]:.2f}]")
            return f"x{candidate.speedup:.2f}{interval}, {candidate.map_drop_points:+.2f} mAP points"

        others = "; ".join(f"{candidate.runtime} {numbers(candidate)}"
                           + ("" if candidate.map_drop_points <= self.max_map_drop_points else " (over budget)")
                           for candidate in self.candidates if candidate.runtime != self.picked)
        against = f"against {self.yardstick}, paired, same run"
        chosen = self.picked_candidate
        if chosen is None:
            return (f"no int8 runtime stayed within {self.max_map_drop_points:g} mAP points ({against}): {others}")
        return (f"{chosen.runtime} is the fastest int8 runtime within {self.max_map_drop_points:g} mAP points "
                f"({numbers(chosen)} {against})" + (f"; {others}" if others else ""))

    def as_dict(self) -> dict:
        return {"picked": self.picked, "yardstick": self.yardstick, "max_map_drop_points": self.max_map_drop_points,
                "candidates": [candidate.as_dict() for candidate in self.candidates], "reason": self.reason()}


def check_budget(max_map_drop_points: float) -> float:
    """``max_map_drop_points`` if it is a budget in mAP points above 0 and at most 100, else one message."""
    if not isinstance(max_map_drop_points, (int, float)) or not 0 < max_map_drop_points <= 100:
        raise ConfigError(f"the mAP budget is in points of the 0-100 scale, above 0 and at most 100 (e.g. 1.0), "
                          f"got {max_map_drop_points!r}")
    return float(max_map_drop_points)


def choose_int8(records: Iterable[Mapping[str, Any]], yardstick: Mapping[str, Any],
                max_map_drop_points: float) -> AutoChoice:
    """The fastest of ``records`` (int8 records timed against ``yardstick``) whose mAP is at most
    ``max_map_drop_points`` below the yardstick's. Speed is the paired speed-up's median; a tie goes to the smaller
    mAP drop. Pure: reads the records only."""
    from compresskit.report import compare

    budget = check_budget(max_map_drop_points)
    candidates = []
    for record in records:
        ratios = compare(record, yardstick)
        if ratios["latency_speedup"] is None or ratios["map_drop_points"] is None:
            raise ConfigError(f"record {record['id']!r} has no paired latency or mAP against {yardstick['id']!r}")
        candidates.append(Candidate(record["runtime"], record["id"], float(ratios["latency_speedup"]),
                                    None if ratios["latency_interval"] is None else tuple(ratios["latency_interval"]),
                                    float(ratios["map_drop_points"])))
    within = [candidate for candidate in candidates if candidate.map_drop_points <= budget]
    best = max(within, key=lambda candidate: (candidate.speedup, -candidate.map_drop_points), default=None)
    return AutoChoice(None if best is None else best.runtime, yardstick["id"], budget, tuple(candidates))


def measure_int8_candidates(study, detector: nn.Module, calibration_set, out_stem: Path | str, yardstick: str,
                            record_prefix: str, *, runtimes: Iterable[str] | None = None, calibration_images: int = 64,
                            technique: str = "static_ptq", model: str | None = None, variant: str = "",
                            config: Mapping[str, Any] | None = None,
                            log: Callable[[str], None] | None = None) -> list[tuple[dict, Int8Build]]:
    """Each int8 path (``runtimes``, default every registered one) quantizes ``detector`` and its core is measured
    by ``study`` as record ``<record_prefix>/<label>-int8`` against ``yardstick`` (a record of the study). Returns
    ``(record, build)`` pairs in the order measured."""
    measured = []
    for runtime in runtimes or int8_runtimes():
        if log is not None:
            log(f"  int8 for {runtime} ...")
        build = build_int8(runtime, detector, calibration_set, out_stem, calibration_images, study.threads)
        record = study.measure(detector, f"{record_prefix}/{build.label}-int8", technique=technique,
                               runtime=build.runtime, core=build.core, artifact=build.artifact, baseline=yardstick,
                               model=model, variant=f"{variant}{build.variant}",
                               config={**(config or {}), "quantization": build.details})
        measured.append((record, build))
    return measured


def mark_choice(record: dict, choice: AutoChoice) -> dict:
    """``record`` (the picked candidate's) with the choice in its config: ``config.auto`` and ``chosen: true``."""
    record["config"] = {**(record.get("config") or {}), "chosen": True, "auto": choice.as_dict()}
    return record


def measure_auto(study, detector: nn.Module, calibration_set, out_stem: Path | str, yardstick: str,
                 record_prefix: str, max_map_drop_points: float, *, chosen_id: str | None = None,
                 **candidates: Any) -> tuple[AutoChoice, dict | None]:
    """:func:`measure_int8_candidates`, then :func:`choose_int8` against the study's ``yardstick`` record. The
    picked record is marked (:func:`mark_choice`) and, with ``chosen_id``, renamed to it, so a pipeline's stage
    keeps one id whichever runtime wins. ``candidates`` are :func:`measure_int8_candidates`'s keyword arguments.

    Returns:
        The choice and the picked record (None when no candidate stayed within the budget).
    """
    measured = measure_int8_candidates(study, detector, calibration_set, out_stem, yardstick, record_prefix,
                                       **candidates)
    records = [record for record, _ in measured]
    choice = choose_int8(records, study.records_by_id[yardstick], max_map_drop_points)
    picked = next((record for record in records if record["runtime"] == choice.picked), None)
    if picked is not None:
        mark_choice(picked, choice)
        if chosen_id is not None:
            picked["id"] = chosen_id
    if study.log is not None:
        study.log(f"  auto: {choice.reason()}")
    return choice, picked
