"""Static int8 for OpenVINO with NNCF: post-training quantization, and quantization under an accuracy budget.

The core is exported to ONNX and converted to an OpenVINO model (``runtimes.openvino``), then NNCF's
``nncf.quantize`` inserts int8 fake-quantize operations calibrated on the same train images as ONNX Runtime's
static int8 (:func:`~compresskit.quantize.calibration.calibration_batches`), so the two runtimes' int8 differ only
in the quantizer and the kernels. Parts kept in float use the kit's part names (``profile.PARTS``: ``head``,
``layer3``...), mapped to NNCF's ``IgnoredScope`` by op name, so "keep the head in float" means the same on every
runtime. :func:`quantize_core_openvino_with_accuracy_control` hands NNCF the kit's own evaluator on a val slice and
a budget in mAP points; NNCF returns operations to float, most harmful first, until the budget holds. Introduced in
``03_quantization.ipynb``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from compresskit.errors import ConfigError
from compresskit.models.core import ExportableCore, export_core_onnx
from compresskit.quantize.calibration import calibration_batches, check_calibration_settings
from compresskit.quantize.profile import PARTS, part_of_node
from compresskit.runtimes.openvino import require_openvino, save_ir

PRESETS = ("performance", "mixed")  # NNCF's: symmetric activations, or asymmetric (a zero point) ones
# Operations NNCF quantizes in these cores; parts kept in float list theirs by name.
_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul")


@dataclass
class OpenVinoQuantConfig:
    """Settings of :func:`quantize_core_openvino`; round-trips through JSON via ``dataclasses.asdict``.

    Attributes:
        calibration_images: exactly this many train images calibrate the activation ranges (the same images as
            ``OrtQuantConfig`` with the same count and seed).
        preset: ``performance`` (symmetric int8 activations, NNCF's default for CPUs) or ``mixed`` (asymmetric
            activations, for layers after a non-ReLU activation).
        fast_bias_correction: NNCF's bias correction after quantization (it shifts each conv's bias to cancel
            the mean error int8 introduces).
        exclude: kit part names (``profile.PARTS``) or op-name prefixes (e.g. ``/backbone/body/layer1/``) kept in
            float.
        seed: picks the calibration images.
    """

    calibration_images: int = 64
    preset: str = "performance"
    fast_bias_correction: bool = True
    exclude: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        check_calibration_settings(self)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; use one of {PRESETS}")
        if not isinstance(self.fast_bias_correction, bool):
            raise ConfigError(f"fast_bias_correction must be True or False, got {self.fast_bias_correction!r}")


@dataclass(frozen=True)
class OpenVinoQuantized:
    """What :func:`quantize_core_openvino` wrote and how. Either IR runs as an ``openvino`` core:
    ``compresskit.runtimes.OpenVinoCore(path, threads)``.

    Attributes:
        int8_path: the int8 IR (``.xml``, weights in the ``.bin`` beside it). fp32_path: the float IR it was
            quantized from (the same conversion, so the two compare like for like).
        config: the settings used. calibration_images: images fed to NNCF. excluded_ops: operations kept in
            float on request (``config.exclude``). reverted_ops: operations NNCF's accuracy control returned to
            float (empty for plain post-training quantization). accuracy: what accuracy control measured (the
            float and int8 mAP on its val slice, the budget), empty otherwise.
    """

    int8_path: Path
    fp32_path: Path
    config: OpenVinoQuantConfig
    calibration_images: int
    excluded_ops: tuple[str, ...]
    reverted_ops: tuple[str, ...] = ()
    accuracy: dict[str, Any] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        """fp32 IR bytes / int8 IR bytes (graph and weights)."""
        return _ir_bytes(self.fp32_path) / _ir_bytes(self.int8_path)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths as strings, config as a dict, op lists as counts and parts)."""
        return {"int8_path": str(self.int8_path), "fp32_path": str(self.fp32_path), "config": asdict(self.config),
                "calibration_images": self.calibration_images, "excluded_ops": len(self.excluded_ops),
                "reverted_ops": len(self.reverted_ops), "reverted_parts": reverted_parts(self.reverted_ops),
                **({"accuracy_control": self.accuracy} if self.accuracy else {}),
                "size_ratio": round(self.size_ratio, 4)}


def _ir_bytes(xml_path: Path) -> int:
    return xml_path.stat().st_size + xml_path.with_suffix(".bin").stat().st_size


def reverted_parts(op_names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """How many of ``op_names`` fall in each kit part (``profile.part_of_node``), for a record a reader can
    follow: "3 in head, 1 in fpn" says more than 4 op names."""
    counts: dict[str, int] = {}
    for name in op_names:
        part = part_of_node(name)
        counts[part] = counts.get(part, 0) + 1
    return counts


def fp32_ir_for(int8_path: Path | str) -> Path:
    """Where :func:`quantize_core_openvino` writes the float IR of ``int8_path``: ``<stem>-fp32.xml`` beside it."""
    int8_path = Path(int8_path)
    return int8_path.with_name(f"{int8_path.stem}-fp32.xml")


def ignored_op_names(model: Any, exclude: tuple[str, ...]) -> list[str]:
    """The weighted operations of an OpenVINO ``model`` named by ``exclude``: kit part names or op-name prefixes.

    Raises:
        ConfigError: an entry matches no operation.
    """
    names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED_OPS]
    selected: list[str] = []
    for entry in exclude:
        matches = [name for name in names if (part_of_node(name) == entry if entry in PARTS
                                              else name.startswith(entry))]
        if not matches:
            raise ConfigError(f"exclude entry {entry!r} matches no operation of the core; use a part name {PARTS} "
                              "or an op-name prefix such as '/backbone/body/layer1/'")
        selected += [name for name in matches if name not in selected]
    return selected


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """NNCF without its INFO lines and progress bars (a lesson's output shows the kit's results, not a
    library's log). The bars draw on rich's shared console, swapped here for a silent one. NNCF compiles models
    of its own: the thread's signal stack is kept (:func:`~compresskit.runtimes.openvino.signal_stack_kept`)."""
    import nncf
    import rich

    from compresskit.runtimes.openvino import signal_stack_kept

    logger = logging.getLogger("nncf")
    level = logger.level
    shared_console = rich.get_console()
    nncf.set_log_level(logging.WARNING)
    rich._console = rich.console.Console(quiet=True)  # rich keeps its shared console in this module attribute
    try:
        with signal_stack_kept():
            yield
    finally:
        rich._console = shared_console
        nncf.set_log_level(level or logging.INFO)


def _prepared(detector: nn.Module, calibration_dataset, config: OpenVinoQuantConfig, out_path: Path):
    """The float OpenVINO model of ``detector``'s core, written as the fp32 IR, and the calibration batches."""
    ov = require_openvino()
    work_detector = copy.deepcopy(detector).eval()  # export and the transform switch modes: keep the caller's
    batches = calibration_batches(work_detector, calibration_dataset, images=config.calibration_images,
                                  seed=config.seed)
    with tempfile.TemporaryDirectory(prefix="compresskit-ov-") as tmp:
        exported = export_core_onnx(ExportableCore(work_detector), Path(tmp) / "core.onnx",
                                    example=batches[0].clone())
        model = ov.convert_model(str(exported))
    save_ir(model, fp32_ir_for(out_path))
    return model, batches


def _nncf_settings(model: Any, config: OpenVinoQuantConfig, batches: list) -> dict[str, Any]:
    import nncf

    excluded = ignored_op_names(model, config.exclude)
    preset = nncf.QuantizationPreset.PERFORMANCE if config.preset == "performance" else nncf.QuantizationPreset.MIXED
    return {"preset": preset, "target_device": nncf.TargetDevice.CPU, "subset_size": len(batches),
            "fast_bias_correction": config.fast_bias_correction,
            "ignored_scope": nncf.IgnoredScope(names=excluded) if excluded else None}


def quantize_core_openvino(detector: nn.Module, calibration_dataset, config: OpenVinoQuantConfig,
                           out_path: Path | str) -> OpenVinoQuantized:
    """Quantize a single-stage detector's core to an int8 OpenVINO IR with NNCF's post-training quantization
    (works on a copy: the detector is untouched).

    Args:
        detector: a float torchvision FCOS / RetinaNet / SSD detector.
        calibration_dataset: the **train** split without augmentation (``load_split("train",
            train_transforms=False)``); ``config.calibration_images`` images of it are used.
        config: see :class:`OpenVinoQuantConfig`.
        out_path: the int8 IR (``.xml``; its ``.bin`` beside it); the float IR is written beside it as
            ``<stem>-fp32.xml``.

    Returns:
        An :class:`OpenVinoQuantized`.

    Raises:
        ConfigError: no calibration image, more than the split holds, or an ``exclude`` entry matching nothing.
        CompressKitError: OpenVINO or NNCF is missing.
    """
    import nncf

    out_path = Path(out_path)
    model, batches = _prepared(detector, calibration_dataset, config, out_path)
    settings = _nncf_settings(model, config, batches)
    with quiet_nncf():
        quantized = nncf.quantize(model, nncf.Dataset([batch.numpy() for batch in batches]), **settings)
    save_ir(quantized, out_path)
    excluded = settings["ignored_scope"].names if settings["ignored_scope"] else []
    return OpenVinoQuantized(int8_path=out_path, fp32_path=fp32_ir_for(out_path), config=config,
                             calibration_images=len(batches), excluded_ops=tuple(excluded))


def quantize_core_openvino_with_accuracy_control(
        detector: nn.Module, calibration_dataset, val_dataset, label_map, config: OpenVinoQuantConfig,
        out_path: Path | str, *, max_drop_points: float = 1.0, validation_images: int = 50,
        max_reverted: int | None = None) -> OpenVinoQuantized:
    """:func:`quantize_core_openvino` under an accuracy budget: NNCF's ``quantize_with_accuracy_control``
    quantizes, measures, and returns the operations that cost most accuracy to float until the int8 core is at
    most ``max_drop_points`` mAP points below the float one on the first ``validation_images`` val images.

    NNCF measures with the kit's evaluator (COCO mAP through the detector's own transform and post-processing,
    :func:`compresskit.engine.evaluate`), on the whole slice and, to rank the operations, image by image.

    Args:
        detector, calibration_dataset, config, out_path: as for :func:`quantize_core_openvino`.
        val_dataset: the val split (a kit dataset read with ``label_map``); its first ``validation_images`` images
            are the slice. Never the calibration images.
        label_map: the detector's label map.
        max_drop_points: the budget, in mAP points (0-100 scale; NNCF gets it on the 0-1 scale).
        max_reverted: stop after this many rounds of returning operations to float (default: NNCF's).

    Returns:
        An :class:`OpenVinoQuantized` whose ``reverted_ops`` lists what went back to float and whose ``accuracy``
        holds the budget, the slice and how many evaluations NNCF ran.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    from torch.utils.data import Subset

    from compresskit.engine import evaluate, make_loader
    from compresskit.models.core import EndToEndDetector
    from compresskit.runtimes.openvino import OpenVinoCore

    if isinstance(max_drop_points, bool) or not isinstance(max_drop_points, (int, float)) or not max_drop_points >= 0:
        raise ConfigError(f"max_drop_points must be a number >= 0 (mAP points), got {max_drop_points!r}")
    if isinstance(validation_images, bool) or not isinstance(validation_images, int) or validation_images < 1:
        raise ConfigError(f"validation_images must be an integer >= 1, got {validation_images!r}")
    out_path = Path(out_path)
    model, batches = _prepared(detector, calibration_dataset, config, out_path)
    settings = _nncf_settings(model, config, batches)
    float_detector = copy.deepcopy(detector).eval()  # its transform and post-processing around each candidate
    evaluations = []

    def validate(compiled_model: Any, items) -> tuple[float, None]:
        # The items are val image indices: the whole slice, a subset NNCF ranks on, or a single image.
        indices = list(items)
        loader = make_loader(Subset(val_dataset, indices), batch_size=1, train=False)
        runner = EndToEndDetector(float_detector, OpenVinoCore.of_compiled(compiled_model))
        value = evaluate(runner, loader, label_map, progress=False)["map"]
        evaluations.append(len(indices))
        return (0.0 if value is None else float(value)), None  # None: no box of that image is gradeable

    restorer = AdvancedAccuracyRestorerParameters(**({"max_num_iterations": max_reverted}
                                                     if max_reverted is not None else {}))
    slice_indices = list(range(min(validation_images, len(val_dataset))))
    with quiet_nncf():
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset([batch.numpy() for batch in batches]), nncf.Dataset(slice_indices),
            validate, max_drop=max_drop_points / 100, drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=restorer, **settings)
    save_ir(quantized, out_path)
    excluded = settings["ignored_scope"].names if settings["ignored_scope"] else []
    accuracy = {"max_drop_points": max_drop_points, "validation_images": len(slice_indices),
                "evaluations": len(evaluations), "images_evaluated": sum(evaluations)}
    return OpenVinoQuantized(int8_path=out_path, fp32_path=fp32_ir_for(out_path), config=config,
                             calibration_images=len(batches), excluded_ops=tuple(excluded),
                             reverted_ops=tuple(name for name in _float_ops(quantized) if name not in excluded),
                             accuracy=accuracy)


def _float_ops(quantized: Any) -> list[str]:
    """Weighted operations of ``quantized`` that read no int8 input: those left (or returned) to float."""
    float_ops = []
    for op in quantized.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED_OPS:
            continue
        producers = [value.get_node() for value in op.input_values()]
        if not any(producer.get_type_name() == "FakeQuantize" for producer in producers):
            float_ops.append(op.get_friendly_name())
    return float_ops


def openvino_op_profile(xml_path: Path | str, batch, runs: int = 20, threads: int | None = None,
                        warmup: int = 3) -> dict[str, float]:
    """Milliseconds per run spent in each operator type, from OpenVINO's own performance counters (the
    counterpart of ONNX Runtime's :func:`~compresskit.quantize.profile.op_time_profile`).

    The IR is compiled with the runtime's settings plus ``PERF_COUNT``; the counters of ``runs`` timed runs after
    ``warmup`` untimed ones are summed by operator type and divided by ``runs``. A type whose kernels compute in
    int8 (OpenVINO names them ``..._I8``) is reported as ``<type> (int8)``, so the int8 share is visible.

    Returns:
        ``{op type: ms per run}``, largest first.
    """
    import numpy as np
    import torch

    from compresskit.runtimes.openvino import compile_model, compile_settings

    if runs < 1 or warmup < 0:
        raise ConfigError(f"need runs >= 1 and warmup >= 0; got {runs=}, {warmup=}")
    compiled = compile_model(Path(xml_path), {**compile_settings(threads), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    data = np.ascontiguousarray(batch.numpy() if isinstance(batch, torch.Tensor) else batch, dtype=np.float32)
    totals: dict[str, float] = {}
    for index in range(warmup + runs):
        request.infer({0: data})
        if index < warmup:
            continue
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            label = info.node_type + (" (int8)" if info.exec_type.lower().endswith("_i8") else "")
            totals[label] = totals.get(label, 0.0) + info.real_time.total_seconds() * 1000.0
    return dict(sorted(((label, ms / runs) for label, ms in totals.items()), key=lambda item: -item[1]))
