"""Looking inside ONNX cores: which kit part each node belongs to, where an int8 file's bytes go, what ONNX
Runtime actually runs, and the time per operator type from ORT's own profiler.

A QDQ file only *describes* int8 arithmetic; ORT decides at load time which Dequantize -> Conv -> Quantize
groups it fuses into int8 kernels. :func:`int8_report` asks ORT (it saves the optimised graph) instead of
guessing, and :func:`op_time_profile` shows the float islands (InstanceNormalization, Transposes) that remain.
Files are made by :mod:`compresskit.quantize.ort`. Introduced in ``03_quantization.ipynb``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit import settings
from compresskit.errors import CheckpointError, CompressKitError, ConfigError

INT8_CONV_OPS = ("QLinearConv", "ConvInteger", "NhwcQLinearConv")  # any domain: ORT's int8 conv kernels
FP32_CONV_OPS = ("Conv", "FusedConv")  # ONNX's and ORT's (com.microsoft, com.microsoft.nchwc) float convs
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Kit part names accepted by ``OrtQuantConfig.exclude`` (see :func:`part_of_node`); "other" collects the rest.
PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "fpn", "head", "cls_logits", "bbox_reg", "bbox_ctrness")
_PREDICTION_CONV = re.compile(r"^(cls_logits|bbox_reg|bbox_ctrness)(_\d+)?$")  # _k: the shared head's k-th level
_BYTE_KINDS = ("int8_weights", "int32_biases", "scales_zero_points", "float_weights", "float_vectors",
               "other_initializers", "graph")


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`CompressKitError` that says how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise CompressKitError("ONNX Runtime is not installed; run `pip install onnxruntime` (the CPU build) "
                               "to quantize or run ONNX cores") from error
    return onnxruntime


def load_onnx(path: Path | str) -> Any:
    """Load an ONNX file, raising :class:`CheckpointError` naming the file when it is missing or unreadable."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {path} does not exist; export or quantize the core first")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning or ValueError on a damaged file
        raise CheckpointError(f"ONNX file {path} is corrupt or not an ONNX model ({type(error).__name__}); "
                              "delete it and export it again") from error


# ------------------------------------------------------------------------------------------------ graph parts
def part_of_node(node_name: str) -> str:
    """The kit part an exported core node belongs to (TorchScript exporter names follow module paths).

    ``/backbone/body/layerK/...`` -> ``layerK``, other ``/backbone/body/...`` -> ``stem``, ``/backbone/fpn/...``
    -> ``fpn``, ``/head/<branch>/conv/...`` -> ``head`` (the shared tower), ``/head/<branch>/cls_logits_k/...``
    (and ``bbox_reg``, ``bbox_ctrness``) -> that prediction conv; anything else -> ``other``. Written for
    ResNet-style trunks (the kit's, torchvision's ResNets); in other trunks every body node reads as ``stem``, so
    exclude their parts by node-name prefix instead.
    """
    parts = node_name.strip("/").split("/")
    if len(parts) >= 3 and parts[:2] == ["backbone", "body"]:
        return parts[2] if parts[2] in ("layer1", "layer2", "layer3", "layer4") else "stem"
    if len(parts) >= 3 and parts[:2] == ["backbone", "fpn"]:
        return "fpn"
    if len(parts) >= 4 and parts[0] == "head":
        if parts[2] == "conv":
            return "head"
        match = _PREDICTION_CONV.match(parts[2])
        if match:
            return match.group(1)
    return "other"


def part_node_names(onnx_path: Path | str) -> dict[str, list[str]]:
    """``{part: [node names in graph order]}`` of an exported core (or its quantized file), for every part of
    :data:`PARTS` plus ``other`` (possibly empty)."""
    groups: dict[str, list[str]] = {part: [] for part in (*PARTS, "other")}
    for node in load_onnx(onnx_path).graph.node:
        groups[part_of_node(node.name)].append(node.name)
    return groups


def excluded_node_names(model: Any, exclude: tuple[str, ...]) -> list[str]:
    """Nodes of ``model`` (an ``onnx.ModelProto``) named by ``exclude``: part names or node-name prefixes.

    Raises:
        ConfigError: an entry matches no node.
    """
    names = [node.name for node in model.graph.node]
    selected: list[str] = []
    for entry in exclude:
        matches = [n for n in names if (part_of_node(n) == entry if entry in PARTS else n.startswith(entry))]
        if not matches:
            raise ConfigError(f"exclude entry {entry!r} matches no node of the core; use a part name {PARTS} "
                              "or a node-name prefix such as '/backbone/body/layer1/'")
        selected += [n for n in matches if n not in selected]
    return selected


def _dtype_name(data_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(data_type).lower()


def onnx_bytes_by_kind(path: Path | str) -> dict[str, int]:
    """Bytes of an ONNX file by what they store; the values add up to the file size.

    Kinds: ``int8_weights`` (8-bit initializers of rank >= 2), ``int32_biases``, ``scales_zero_points`` (inputs 2
    and 3 of Quantize/DequantizeLinear), ``float_weights`` (float tensors of rank >= 2: weights left in float),
    ``float_vectors`` (other float tensors: float biases, GroupNorm's scale and shift), ``other_initializers``
    (shape constants, quantized vectors) and ``graph`` (nodes, names, everything else).

    Args:
        path: an ONNX file.

    Returns:
        ``{kind: bytes}`` with every kind present.
    """
    model = load_onnx(path)
    quant_params = {name for node in model.graph.node if node.op_type in _QDQ_OPS for name in node.input[1:]}
    sizes = dict.fromkeys(_BYTE_KINDS, 0)
    for init in model.graph.initializer:
        dtype, rank = _dtype_name(init.data_type), len(init.dims)
        if init.name in quant_params:
            kind = "scales_zero_points"
        elif dtype in ("int8", "uint8") and rank >= 2:
            kind = "int8_weights"
        elif dtype == "int32":
            kind = "int32_biases"
        elif dtype in ("float", "float16", "bfloat16", "double"):
            kind = "float_weights" if rank >= 2 else "float_vectors"
        else:
            kind = "other_initializers"
        sizes[kind] += init.ByteSize()
    sizes["graph"] = Path(path).stat().st_size - sum(sizes.values())
    return sizes


def _session_options(threads: int) -> Any:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the "optimized model is hardware specific" notice is expected here
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as runtimes.onnxruntime_session
    return options


def _session(path: Path, options: Any) -> Any:
    ort = require_onnxruntime()
    load_onnx(path)  # a clear error for a missing or corrupt file before ORT's own
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def int8_report(path: Path | str) -> dict[str, Any]:
    """What an ONNX core stores and how much of it ONNX Runtime runs as int8.

    Args:
        path: an ONNX file (fp32 or QDQ int8).

    Returns:
        ``{"initializers": {dtype: count}, "saved_nodes": {op: count}, "runtime_nodes": {op: count},
        "int8_convs": n, "fp32_convs": n}``: ``saved_nodes`` counts Conv, QLinearConv, QuantizeLinear and
        DequantizeLinear in the file; ``runtime_nodes`` counts every op type of the graph ORT builds for the CPU
        (all optimisations on, saved through ``optimized_model_filepath``); ``int8_convs`` are the convolutions
        ORT runs with an int8 kernel (QLinearConv after fusing DQ -> Conv -> Q), ``fp32_convs`` those it runs
        in float.
    """
    path = Path(path)
    model = load_onnx(path)
    initializers = Counter(_dtype_name(init.data_type) for init in model.graph.initializer)
    saved = Counter(node.op_type for node in model.graph.node)
    with tempfile.TemporaryDirectory(prefix="compresskit-ort-") as tmp:
        options = _session_options(threads=1)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        _session(path, options)
        runtime = Counter(node.op_type for node in load_onnx(options.optimized_model_filepath).graph.node)
    return {"initializers": dict(initializers),
            "saved_nodes": {op: saved.get(op, 0) for op in ("Conv", "QLinearConv", *_QDQ_OPS)},
            "runtime_nodes": dict(runtime.most_common()),
            "int8_convs": sum(runtime.get(op, 0) for op in INT8_CONV_OPS),
            "fp32_convs": sum(runtime.get(op, 0) for op in FP32_CONV_OPS)}


def op_time_profile(onnx_path: Path | str, batch: torch.Tensor | np.ndarray, runs: int = 20, threads: int | None = None,
                    warmup: int = 3) -> dict[str, float]:
    """Milliseconds per run spent in each operator type, from ONNX Runtime's own profiler.

    The session is profiled for ``warmup + runs`` runs; kernel times of the warm-up runs are dropped, the rest
    are summed by op type and divided by ``runs``. The trace file is deleted afterwards.

    Args:
        onnx_path: the ONNX core. batch: its input (same for every variant compared).
        runs: timed runs. threads: ORT intra-op threads. warmup: untimed runs first.

    Returns:
        ``{op type: ms per run}``, largest first (op types as ORT runs them, e.g. QLinearConv after fusion).
    """
    threads = settings.threads(threads)
    if runs < 1 or warmup < 0 or threads < 1:
        raise ConfigError(f"need runs >= 1, warmup >= 0 and threads >= 1; got {runs=}, {warmup=}, {threads=}")
    data = np.ascontiguousarray(batch.numpy() if isinstance(batch, torch.Tensor) else batch, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="compresskit-profile-") as tmp:
        options = _session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "trace")
        session = _session(Path(onnx_path), options)
        feed = {session.get_inputs()[0].name: data}
        for _ in range(warmup + runs):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink(missing_ok=True)
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = run_starts[warmup] if len(run_starts) > warmup else 0
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") \
                and event["ts"] >= timed_from:
            totals[event.get("args", {}).get("op_name", "?")] += event["dur"] / 1000.0  # µs -> ms
    return {op: total / runs for op, total in totals.most_common()}
