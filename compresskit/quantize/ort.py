"""Static int8 post-training quantization of the detector core with ONNX Runtime (QDQ format).

The fp32 core is exported at a fixed ``1x3xHxW`` shape (so the FPN's shape plumbing folds into constants), run
through ORT's pre-processing (shape inference, graph optimisation), calibrated on exactly N train images and
quantized: per-channel int8 weights, int32 biases, uint8 or int8 activations. Both files are then compacted
alike (see :func:`compact_onnx`). Introduced in ``03_quantization.ipynb``; :mod:`compresskit.quantize.profile`
maps nodes to kit parts and shows what the int8 file holds, what ORT runs and where the time goes.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from compresskit.errors import ConfigError
from compresskit.measure.environment import has_vnni
from compresskit.models.core import ExportableCore, export_core_onnx
from compresskit.quantize.calibration import calibration_batches, check_calibration_settings
from compresskit.quantize.profile import excluded_node_names, require_onnxruntime

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("auto", "uint8", "int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
FP32_SUFFIX = "-fp32"  # the float file is written beside the int8 one as <stem>-fp32.onnx
_CALIBRATION_CHUNK = 16  # images per calibration pass: ORT keeps every activation of a pass in memory


@dataclass
class OrtQuantConfig:
    """Settings of :func:`quantize_core_onnx`; round-trips through JSON via ``dataclasses.asdict``.

    Attributes:
        calibration_images: exactly this many train images calibrate the activation ranges.
        method: ``minmax`` | ``entropy`` | ``percentile`` (ORT's ``CalibrationMethod``).
        activations: ``auto`` | ``uint8`` | ``int8``; ``auto`` picks by CPU (see :func:`choose_activations`).
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights; None decides from the CPU (see :func:`choose_reduce_range`).
        exclude: kit part names (``profile.PARTS``: stem, layer1-4, fpn, head, cls_logits, bbox_reg, bbox_ctrness)
            or ONNX node-name prefixes (e.g. ``/backbone/body/layer1/``) kept in float.
        fixed_shape: export at the calibration batch's fixed ``1x3xHxW`` shape (faster, batch 1 only).
        seed: picks the calibration images.
    """

    calibration_images: int = 64
    method: str = "minmax"
    activations: str = "auto"
    per_channel: bool = True
    reduce_range: bool | None = None
    exclude: tuple[str, ...] = ()
    fixed_shape: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_calibration_settings(self)
        for name, allowed in (("method", CALIBRATION_METHODS), ("activations", ACTIVATION_TYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; use one of {allowed}")
        for name in ("per_channel", "reduce_range", "fixed_shape"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "reduce_range" and value is None):
                allowed = "True, False or None (decide from the CPU)" if name == "reduce_range" else "True or False"
                raise ConfigError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class QuantizedCore:
    """What :func:`quantize_core_onnx` wrote and how. Either file runs as an ``onnxruntime`` core:
    ``compresskit.runtimes.OnnxCore(path, threads)``.

    Attributes:
        int8_path: the QDQ int8 core. fp32_path: the float core it was quantized from (same pre-processing and
        compaction, so the two files and their latencies compare like for like).
        config: the settings used. activations: ``uint8`` or ``int8``, with ``activation_reason``.
        reduce_range: whether the weights were quantized to 7 bits, with ``reduce_range_reason``.
        calibration_images: images actually fed to the calibrator. input_shape: the core's input
        (``(1, 3, H, W)``; ``None`` entries are free axes). excluded_nodes: nodes kept in float.
    """

    int8_path: Path
    fp32_path: Path
    config: OrtQuantConfig
    activations: str
    activation_reason: str
    calibration_images: int
    input_shape: tuple[int | None, ...]
    excluded_nodes: tuple[str, ...]
    reduce_range: bool = False
    reduce_range_reason: str = ""

    @property
    def size_ratio(self) -> float:
        """fp32 file bytes / int8 file bytes."""
        return self.fp32_path.stat().st_size / self.int8_path.stat().st_size

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths as strings, config as a dict)."""
        return {"int8_path": str(self.int8_path), "fp32_path": str(self.fp32_path), "config": asdict(self.config),
                "activations": self.activations, "activation_reason": self.activation_reason,
                "reduce_range": self.reduce_range, "reduce_range_reason": self.reduce_range_reason,
                "calibration_images": self.calibration_images, "input_shape": list(self.input_shape),
                "excluded_nodes": len(self.excluded_nodes), "size_ratio": round(self.size_ratio, 4)}


def choose_activations(activations: str = "auto", machine: str | None = None) -> tuple[str, str]:
    """The activation type to quantize to, and why.

    Args:
        activations: ``auto``, ``uint8`` or ``int8``; only ``auto`` looks at the CPU.
        machine: ``platform.machine()`` by default.

    Returns:
        ``(type, reason)`` with type ``uint8`` or ``int8``.
    """
    if activations != "auto":
        return activations, f"asked for {activations} activations"
    machine = (machine or platform.machine()).lower()
    if machine in X86_MACHINES:
        reason = ("x86: ORT's int8 kernels (VNNI and AMX included) multiply uint8 activations by int8 weights; "
                  "with int8 activations many convs fall back to DequantizeLinear -> fp32 Conv -> QuantizeLinear "
                  "(measured: 40 of the teacher's 82, no faster than fp32 overall)")
        return "uint8", reason
    return "int8", f"{machine}: ORT's Arm64 int8 kernels take signed activations x signed weights directly"


def choose_reduce_range(reduce_range: bool | None, activations: str, isa: Sequence[str] | None = None,
                        machine: str | None = None) -> tuple[bool, str]:
    """Whether to quantize the weights to 7 bits, and why.

    Without VNNI (AVX2-only and AVX-512 without VNNI), ONNX Runtime's x86 kernels multiply uint8 activations by
    int8 weights with ``vpmaddubsw``, which adds each pair of products into a *saturating* int16: 255 x 127 twice
    overflows it, and the detections degrade. 7-bit weights (-64..64) keep every pair in range. VNNI and AMX
    accumulate in int32, so full 8-bit weights are safe there. ONNX Runtime reads the CPU itself: unlike oneDNN
    (``ONEDNN_MAX_CPU_ISA``) it cannot be capped to emulate an older CPU, so this follows the real flags.

    Args:
        reduce_range: True or False is used as given; None decides from the CPU.
        activations: the resolved activation type (``uint8`` or ``int8``).
        isa: ISA flags (default: this CPU's). machine: ``platform.machine()``.

    Returns:
        ``(reduce_range, reason)``.
    """
    if reduce_range is not None:
        return reduce_range, f"asked for reduce_range={reduce_range}"
    if (machine or platform.machine()).lower() not in X86_MACHINES or activations != "uint8":
        return False, "8-bit weights: only x86's uint8 x int8 kernels can saturate"
    if has_vnni(isa):
        return False, "8-bit weights: this CPU's VNNI/AMX int8 dot products accumulate in int32 and cannot saturate"
    return True, ("7-bit weights: this CPU has no VNNI, so ONNX Runtime adds pairs of uint8 x int8 products in a "
                  "saturating int16 (vpmaddubsw); with 8-bit weights the teacher lost 5.6 mAP points on an "
                  "AVX2-only CPU, with 7-bit weights 0.2")


# ------------------------------------------------------------------------------------------------ compaction
def compact_onnx(model: Any) -> Any:
    """Shrink an ONNX graph without changing what it computes (in place; returns ``model``).

    Drops the all-zero zero points of dequantized weights and biases, initializers no node reads and the stored
    shape annotations (``value_info``: ORT infers shapes at load time), and renames every internal tensor to a
    short ``t<hex>`` name: with ~900 Quantize/Dequantize nodes the exporter's long tensor names alone cost ~4 %
    of an int8 file. Node names (they say which module a node came from) and graph input/output names stay.
    """
    from onnx import numpy_helper

    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:  # an all-zero zero point of a constant (weight, bias) is ONNX's default: drop it
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[0] in constants \
                and node.input[2] in constants and not numpy_helper.to_array(constants[node.input[2]]).any():
            del node.input[2]
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    keep = {value.name for value in (*graph.input, *graph.output)}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed):x}")

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    return model


def _save_all_or_none(models: dict[Path, Any]) -> None:
    """Write each model to ``<path>.part``, then rename them all: a failure leaves none of the paths changed."""
    import onnx

    parts = {path: path.with_name(path.name + ".part") for path in models}
    try:
        for path, model in models.items():
            onnx.save(model, str(parts[path]))
        for path, part in parts.items():
            part.replace(path)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ quantization
class _DropPerTensorFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence two kinds of ORT quantizer chatter: one warning per GroupNorm scale/shift vector (ORT falls back
    to one scale per tensor for them, which is right) and the histogram calibrators' progress prints."""
    notice_filter = _DropPerTensorFallbackNotice()
    logging.getLogger().addFilter(notice_filter)  # ORT logs through the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger().removeFilter(notice_filter)


class _CalibrationReader:
    """Feeds calibration batches to ORT one image at a time; counts what it handed out. ``set_range`` lets ORT
    calibrate in chunks (each chunk's activations are freed before the next)."""

    def __init__(self, batches: list[torch.Tensor], input_name: str) -> None:
        self.batches = [batch.numpy() for batch in batches]
        self.input_name = input_name
        self.images_read = 0
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._pending, None)
        if batch is None:
            return None
        self.images_read += batch.shape[0]
        return {self.input_name: batch}


def _pad_to(batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Zero-pad batches bottom/right to their largest height and width: what torchvision's transform does when
    it batches images of different sizes, so a fixed-shape core sees the same inputs as in evaluation."""
    height, width = (max(batch.shape[axis] for batch in batches) for axis in (-2, -1))
    padded = [nn.functional.pad(batch, (0, width - batch.shape[-1], 0, height - batch.shape[-2]))
              for batch in batches]
    return padded, (height, width)


def _fix_input_shape(model: Any, shape: tuple[int, ...]) -> None:
    """Pin the input to ``shape`` and forget derived shapes, so pre-processing re-infers and folds them."""
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]


def _calibration_chunk(images: int) -> int:
    """Largest divisor of ``images`` up to ``_CALIBRATION_CHUNK`` (ORT wants equal chunks)."""
    return max(size for size in range(1, min(images, _CALIBRATION_CHUNK) + 1) if images % size == 0)


def _cache_argument(quantize_static: Callable, calibration_cache: Path | str | None) -> dict[str, str]:
    """``quantize_static``'s calibration-cache argument, when there is a cache and this ONNX Runtime has the
    argument (older releases calibrate every time)."""
    if calibration_cache is None or "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return {}
    return {"calibration_cache_path": str(calibration_cache)}


def fp32_path_for(int8_path: Path | str) -> Path:
    """Where :func:`quantize_core_onnx` writes the fp32 file of ``int8_path``: ``<stem>-fp32.onnx`` beside it."""
    int8_path = Path(int8_path)
    return int8_path.with_name(f"{int8_path.stem}{FP32_SUFFIX}{int8_path.suffix or '.onnx'}")


def quantize_core_onnx(detector: nn.Module, calibration_dataset, config: OrtQuantConfig,
                       out_path: Path | str, calibration_cache: Path | str | None = None) -> QuantizedCore:
    """Quantize a single-stage detector's core to a static QDQ int8 ONNX file (works on a copy: the detector
    is untouched).

    Args:
        detector: a float torchvision FCOS / RetinaNet / SSD detector.
        calibration_dataset: the **train** split without augmentation (``load_split("train",
            train_transforms=False)``); ``config.calibration_images`` images of it are used.
        config: see :class:`OrtQuantConfig`.
        out_path: the int8 file; the fp32 file it came from is written beside it as ``<stem>-fp32.onnx``. Both
            are written atomically: on failure neither appears (an earlier file there is left as it was).
        calibration_cache: a JSON file of activation ranges (ONNX Runtime's calibration cache): read when it
            exists, written when it does not. The ranges depend on the detector, the calibration images, the
            shape and the method, not on what is excluded, so calls that differ only in ``exclude`` can share one
            (the sensitivity scan); the caller names a file per such group. None (or an ONNX Runtime without
            the cache) calibrates every time.

    Returns:
        A :class:`QuantizedCore`. A fixed-shape core takes batch 1 only (evaluate it with a batch-1 loader).

    Raises:
        ConfigError: no calibration image, more than the split holds, or an ``exclude`` entry matching nothing.
        CompressKitError: ONNX Runtime is missing.
    """
    import onnx

    require_onnxruntime()
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    out_path = Path(out_path)
    fp32_path = fp32_path_for(out_path)
    activations, reason = choose_activations(config.activations)
    reduce_range, reduce_range_reason = choose_reduce_range(config.reduce_range, activations)
    work_detector = copy.deepcopy(detector).eval()  # export and the transform switch modes: keep the caller's
    batches, (height, width) = _pad_to(calibration_batches(work_detector, calibration_dataset,
                                                           images=config.calibration_images, seed=config.seed))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compresskit-ort-") as tmp:
        exported, prepared, quantized = (Path(tmp) / name for name in ("export.onnx", "pre.onnx", "int8.onnx"))
        export_core_onnx(ExportableCore(work_detector), exported, example=batches[0].clone())  # no inference tensor
        input_shape: tuple[int | None, ...] = (None, 3, None, None)
        if config.fixed_shape:
            input_shape = (1, 3, height, width)
            model = onnx.load(str(exported))
            _fix_input_shape(model, input_shape)
            onnx.save(model, str(exported))
        quant_pre_process(str(exported), str(prepared))
        prepared_model = onnx.load(str(prepared))
        excluded = excluded_node_names(prepared_model, config.exclude)
        reader = _CalibrationReader(batches, input_name=prepared_model.graph.input[0].name)
        quant_type = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[config.method]
        with _quiet_quantizer():
            quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ,
                            per_channel=config.per_channel, reduce_range=reduce_range,
                            activation_type=quant_type, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                            calibrate_method=method,
                            extra_options={"CalibStridedMinMax": _calibration_chunk(len(batches))},
                            **_cache_argument(quantize_static, calibration_cache))
        _save_all_or_none({fp32_path: compact_onnx(prepared_model),
                           out_path: compact_onnx(onnx.load(str(quantized)))})
    # From the cache, the ranges of these same images were read instead (the reader was not called).
    calibrated_on = reader.images_read or sum(batch.shape[0] for batch in batches)
    return QuantizedCore(int8_path=out_path, fp32_path=fp32_path, config=config, activations=activations,
                         activation_reason=reason, calibration_images=calibrated_on,
                         input_shape=input_shape, excluded_nodes=tuple(excluded), reduce_range=reduce_range,
                         reduce_range_reason=reduce_range_reason)
