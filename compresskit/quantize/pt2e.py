"""Static int8 of the detector core with torchao PT2E and the X86 Inductor quantizer, lowered by torch.compile.

``torch.export`` captures the core, ``prepare_pt2e`` inserts observers, calibration sets the ranges,
``convert_pt2e`` writes quantize/dequantize pairs around int8 weights, and inductor (with freezing) fuses each
``dequant -> conv -> quant`` into a oneDNN ``qconv`` kernel. Two things stand in the way on a torchvision FCOS:

* **Reused modules.** The quantizer groups graph nodes by the module that made them, and a module called twice
  (the FCOS head runs on five FPN levels; ``BasicBlock`` calls ``self.relu`` twice) becomes one group with several
  outputs: ``ValueError: Input partition has more than one output node``. :func:`separate_call_sites_` gives each
  call its own group name (``torch.export`` already numbers repeated calls ``name@1``, ``name@2``...), so the
  graph keeps one weight per module. Giving each level its own copy of the head would also work but multiplies
  the head's weights by five in the shipped artifact.
* **Shared int8 weights.** After conversion the five call sites of a head conv read one int8 constant; inductor
  merges their dequantize nodes into one node with five users, which the weight-prepack pattern refuses, and the
  head convs silently run in fp32. :func:`untie_int8_weights` gives each call site its own int8 tensor in the
  copy that is compiled only (oneDNN keeps a packed weight per call site anyway); the artifact keeps one.

Measured on the shipped teacher (AVX-512 VNNI EPYC, torch 2.14, torchao 0.18, 2 threads, 320x320): all 82 convs
run as ``onednn::qconv`` kernels, 2.7x faster than the fp32 eager core, mAP 0.8389 vs 0.8396 on 100 val images.
What is left is the float island of the head's GroupNorm (fp32 out of each conv, normalise, requantize): about a
quarter of the int8 core's time. Introduced in ``03_quantization.ipynb``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compresskit.errors import ConfigError
from compresskit.measure.environment import has_vnni
from compresskit.models.core import ExportableCore
from compresskit.quantize.calibration import calibration_batches

ONEDNN_CAPS_WITHOUT_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE")  # ONEDNN_MAX_CPU_ISA values below VNNI


@dataclass
class Pt2eConfig:
    """Settings of :func:`quantize_pt2e` (JSON-able, validated on creation).

    Attributes:
        calibration_images: train images whose activations set the ranges.
        reduce_range: 7-bit activations (0..127). ``None`` decides from the CPU: see :func:`needs_reduce_range`.
        per_channel: one weight scale per output channel (else one per tensor).
        compile: lower with ``torch.compile`` (inductor, freezing) into int8 kernels; ``False`` keeps the converted
            graph, which *simulates* int8 in fp32 (right numbers, no speed-up).
        seed: picks the calibration images.
    """

    calibration_images: int = 32
    reduce_range: bool | None = None
    per_channel: bool = True
    compile: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not integer(self.calibration_images) or self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be a positive integer, got {self.calibration_images!r}")
        if not integer(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("reduce_range", "per_channel", "compile"):
            value = getattr(self, name)
            allowed = "True, False or None (decide from the CPU)" if name == "reduce_range" else "True or False"
            if not isinstance(value, bool) and not (name == "reduce_range" and value is None):
                raise ConfigError(f"{name} must be {allowed}, got {value!r}")
        if not self.per_channel and self.compile:
            # Measured (torch 2.14, torchao 0.18): inductor's x86 lowering only matches per-channel weight
            # dequantization, so with per-tensor weights all 56 convs of the student compiled to fp32 convs.
            raise ConfigError("per_channel=False has no int8 kernels after torch.compile (every conv runs in "
                              "fp32); use per_channel=True, or compile=False to study per-tensor accuracy")


def needs_reduce_range(isa: Sequence[str] | None = None) -> bool:
    """Whether activations should use 7 bits on this CPU.

    Without VNNI (AVX2-only CPUs), oneDNN multiplies uint8 activations by int8 weights with ``vpmaddubsw``,
    which adds pairs of products into a *saturating* int16: two 255 x 127 products overflow it. Capping
    activations at 127 avoids the overflow (measured on the teacher with oneDNN capped at AVX2: mAP 0.798
    without, 0.836 with, 0.840 in fp32). VNNI and AMX accumulate in int32, so the full 8 bits are safe there.

    Args:
        isa: ISA flags; when None, this CPU's, and a oneDNN cap below VNNI in
            ``ONEDNN_MAX_CPU_ISA`` (how the lesson emulates an AVX2 machine) counts as no VNNI.
    Returns:
        True when none of ``avx512_vnni``, ``avx_vnni``, ``amx_int8`` is present (or oneDNN is capped below).
    """
    if isa is None:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
        if cap in ONEDNN_CAPS_WITHOUT_VNNI:
            return True
    return not has_vnni(isa)


def x86_quantizer(config: Pt2eConfig, qat: bool = False):
    """The X86 Inductor quantizer for ``config``: uint8 per-tensor activations (7-bit with ``reduce_range``),
    symmetric int8 weights per channel (or per tensor; QAT is always per channel), fake-quant with ``qat``."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    reduce_range = needs_reduce_range() if config.reduce_range is None else config.reduce_range
    scheme = x86.get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=reduce_range)
    if not config.per_channel and not qat:
        from torchao.quantization.pt2e.observer import MinMaxObserver

        per_tensor = dataclasses.replace(scheme.weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                         observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
        scheme = dataclasses.replace(scheme, weight=per_tensor)
    return x86.X86InductorQuantizer().set_global(scheme)


def separate_call_sites_(graph_module: torch.fx.GraphModule) -> int:
    """Give every call of a reused module its own partition name, in place (metadata only).

    The quantizer's pattern matcher groups nodes by the innermost entry of ``nn_module_stack``, whose qualified
    name is the same for every call of a module; ``torch.export`` does number the calls in the entry's *key*
    (``...relu@1``). Copying that number into the name makes each call its own partition; weights stay shared.

    Returns: how many nodes were renamed.
    """
    renamed = 0
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (name, module_type) = next(reversed(stack.items()))
        call = key.rpartition("@")[2]
        if "@" in key and call.isdigit() and not name.endswith(f"@{call}"):
            stack = dict(stack)  # the dict may be shared with other nodes
            stack[key] = (f"{name}@{call}", module_type)
            node.meta["nn_module_stack"] = stack
            renamed += 1
    return renamed


def export_for_quantization(core: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export`` of ``core`` at ``example``'s shape, as a GraphModule ready for ``prepare_pt2e``."""
    graph_module = torch.export.export(core, (example,)).module()
    separate_call_sites_(graph_module)
    return graph_module


def _owner(graph_module: nn.Module, target: str) -> tuple[nn.Module, str]:
    """The submodule holding the dotted attribute ``target``, and the attribute's own name."""
    owner, _, attribute = target.rpartition(".")
    return (graph_module.get_submodule(owner) if owner else graph_module), attribute


def strip_unused_attributes_(graph_module: torch.fx.GraphModule) -> int:
    """Delete parameters and buffers no graph node reads, in place.

    ``convert_pt2e`` adds the int8 weights as new constants but leaves the fp32 originals attached: left there
    they would make the state_dict (and any size measured from it) larger than the float model.

    Returns: how many tensors were removed.
    """
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    tensors = [*graph_module.named_parameters(), *graph_module.named_buffers()]
    unused = [name for name, _ in tensors if name not in used]
    for name in unused:
        delattr(*_owner(graph_module, name))
    graph_module.delete_all_unused_submodules()
    return len(unused)


def untie_int8_weights(graph_module: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, int]:
    """A copy of a converted graph in which every reader of a shared int8 weight has its own copy of it.

    Inductor merges identical dequantize nodes of one constant, and its weight-prepack pattern only fuses a
    dequantize with a single user, so a weight read at five call sites would stay fp32. Use the copy for
    ``torch.compile`` only; ship the original (one copy of each weight).

    Returns: ``(copy, number of int8 tensors added)``.
    """
    untied = copy.deepcopy(graph_module)
    graph = untied.graph
    added = 0
    for node in list(graph.nodes):
        if node.op != "get_attr" or len(node.users) < 2:
            continue
        value = getattr(*_owner(untied, node.target))
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int8:
            continue
        for user in list(node.users)[1:]:
            name = f"{node.target.replace('.', '_')}_call{added}"
            untied.register_buffer(name, value.clone())
            with graph.inserting_before(user):
                replacement = graph.get_attr(name)
            replacement.meta = dict(node.meta)
            user.replace_input_with(node, replacement)
            added += 1
    graph.lint()
    untied.recompile()
    return untied, added


def quantized_conv_count(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """Convolutions of a converted graph, and how many read a dequantized activation *and* weight (the pattern
    inductor lowers to an int8 kernel).

    Returns: ``{"convs": total, "quantized_convs": int8 pattern, "float_convs": the rest}``.
    """
    def dequantized(node) -> bool:
        return isinstance(node, torch.fx.Node) and "dequantize" in str(node.target)

    convs = [n for n in graph_module.graph.nodes if n.op == "call_function"
             and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)]
    quantized = sum(1 for n in convs if dequantized(n.args[0]) and dequantized(n.args[1]))
    return {"convs": len(convs), "quantized_convs": quantized, "float_convs": len(convs) - quantized}


@contextlib.contextmanager
def _native_stderr_silenced():
    """The process's file descriptor 2 sent to the null device for the block: the profiler's C++ library writes
    start/stop lines there (and, on a CPU-only machine, an "ERROR" that no GPU was found), which no setting turns
    off. Python exceptions still propagate; only native writes during the block are dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def lowered_conv_ops(fn: Callable, batch: torch.Tensor) -> dict[str, int]:
    """The convolution kernels one call of ``fn(batch)`` really runs, from the torch profiler.

    ``onednn::qconv*`` are int8 kernels; ``aten::convolution`` is a float convolution (e.g. a conv whose int8
    pattern was not lowered). Returns ``{op name: calls}`` for the ops whose name contains ``conv``.
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn(batch)
    counts = Counter(event.name for event in profiler.events() if "conv" in event.name.lower())
    return dict(sorted(counts.items()))


@dataclass
class Pt2eCore:
    """A PT2E-quantized core: ``batch (N, 3, H, W) -> tuple of head tensors``, usable by ``EndToEndDetector``;
    compiled, it is measured as runtime ``torch-compile`` (its artifact: :meth:`artifact_bytes`).

    The graph was exported at one input shape, so inputs must have that height and width; a batch of N images
    runs as N single-image calls (the shape quantization and latency are measured at).

    Attributes:
        converted: the converted GraphModule (int8 weights, one copy each): what :meth:`artifact_bytes` ships.
        runner: what runs: the compiled untied copy, or ``converted`` when not compiled.
        input_shape: the exported ``(1, 3, H, W)``.
        config: the config used, with ``reduce_range`` resolved.
        compile_seconds: time of the first (compiling) call; None when not compiled.
        summary: :func:`quantized_conv_count` of ``converted``, ``untied_weights`` and, when compiled,
            ``lowered`` (:func:`lowered_conv_ops` of the runner).
        output_names: names of the head tensors, as on :class:`~compresskit.models.core.ExportableCore`.
    """

    converted: torch.fx.GraphModule
    runner: Callable
    input_shape: tuple[int, ...]
    config: Pt2eConfig
    compile_seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    output_names: tuple[str, ...] = ()

    def _run(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.config.compile:
            return tuple(self.runner(image))
        import torch._inductor.config as inductor_config

        # Freezing makes the int8 weights constants inductor can prepack; a recompile must see it too.
        with inductor_config.patch(freezing=True):
            return tuple(self.runner(image))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if batch.dim() != 4 or tuple(batch.shape[1:]) != tuple(self.input_shape[1:]):
            expected = ", ".join(map(str, self.input_shape[1:]))
            raise ConfigError(f"this int8 core was exported for inputs of shape (N, {expected}), got "
                              f"{tuple(batch.shape)}; quantize again with calibration images of that size")
        # Every call sees the same kind of input: an inference tensor under inference_mode (the mode evaluation
        # and latency run in). The compiled graph's guards check a tensor's dispatch keys, which differ between a
        # normal tensor, a normal tensor under inference_mode and an inference tensor: each would compile again.
        with torch.inference_mode():
            outputs = [self._run(image.unsqueeze(0).clone()) for image in batch]
            return tuple(torch.cat(parts, dim=0) for parts in zip(*outputs))

    def artifact_bytes(self) -> bytes:
        """``torch.export.save`` bytes of the converted program: the file a user ships and reloads with
        ``torch.export.load`` (int8 weights, fp32 biases and scales, int64 zero points, and the graph)."""
        program = torch.export.export(self.converted, (torch.zeros(self.input_shape),))
        program.example_inputs = None  # a stored example image would add 1.2 MB of fp32 nobody needs
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return buffer.getvalue()


def _common_shape(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad (bottom/right, like torchvision's batching) every batch to the largest height and width."""
    height = max(b.shape[-2] for b in batches)
    width = max(b.shape[-1] for b in batches)
    return [F.pad(b, (0, width - b.shape[-1], 0, height - b.shape[-2])) for b in batches]


def quantize_pt2e(detector: nn.Module, calibration_dataset, config: Pt2eConfig | None = None) -> Pt2eCore:
    """Static int8 of ``detector``'s core with torchao PT2E, calibrated on train images (detector untouched).

    Args:
        detector: a float torchvision single-stage detector (FCOS, RetinaNet, SSD); its core is copied.
        calibration_dataset: the **train** split; ``config.calibration_images`` of its images are used.
        config: see :class:`Pt2eConfig` (defaults when None).
    Returns:
        A :class:`Pt2eCore`; put it back into a detector with ``EndToEndDetector(detector, core)``.
    Raises:
        ConfigError: more calibration images than the split has.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = config or Pt2eConfig()
    if config.reduce_range is None:
        config = dataclasses.replace(config, reduce_range=needs_reduce_range())
    modes = {module: module.training for module in detector.modules()}
    batches = _common_shape(calibration_batches(detector, calibration_dataset, images=config.calibration_images,
                                                seed=config.seed))
    for module, training in modes.items():  # calibration_batches switched the detector to eval
        module.training = training
    core = copy.deepcopy(ExportableCore(detector)).eval()
    prepared = prepare_pt2e(export_for_quantization(core, example=batches[0]), x86_quantizer(config))
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    converted = convert_pt2e(prepared)
    return lower_converted(converted, batches[0], config, core.output_names)


def lower_converted(converted: torch.fx.GraphModule, example: torch.Tensor, config: Pt2eConfig,
                    output_names: Sequence[str]) -> Pt2eCore:
    """A converted PT2E graph (from calibration or QAT) as a :class:`Pt2eCore`: unused attributes stripped and,
    with ``config.compile``, an untied copy compiled into int8 kernels (timed on ``example``, its input shape)."""
    strip_unused_attributes_(converted)
    summary: dict[str, Any] = quantized_conv_count(converted)
    result = Pt2eCore(converted=converted, runner=converted, input_shape=tuple(example.shape),
                      config=config, summary=summary, output_names=tuple(output_names))
    if config.compile:
        untied, summary["untied_weights"] = untie_int8_weights(converted)
        result.runner = torch.compile(untied, dynamic=False)
        started = time.perf_counter()
        result(example)
        result.compile_seconds = time.perf_counter() - started
        summary["lowered"] = lowered_conv_ops(result, example)
    return result


def prepare_qat_core(detector: nn.Module, example: torch.Tensor, config: Pt2eConfig | None = None
                     ) -> torch.fx.GraphModule:
    """A trainable fake-quant copy of ``detector``'s core for quantization-aware training (detector untouched).

    The GraphModule maps a batch of ``example``'s exact shape (batch size included) to the head tensors, with
    fake quantization on weights and activations; its parameters get gradients. ``.train()``/``.eval()`` raise on
    an exported graph: use torchao's ``move_exported_model_to_train``/``_eval``. After fine-tuning,
    ``convert_pt2e`` gives the int8 graph, lowered as in :func:`quantize_pt2e`.

    Args:
        detector: the float detector.
        example: a core input of the training shape.
        config: only ``reduce_range`` is used (QAT weights are always per channel).
    Returns: the prepared QAT GraphModule.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    core = copy.deepcopy(ExportableCore(detector)).train()
    quantizer = x86_quantizer(config or Pt2eConfig(), qat=True)
    return prepare_qat_pt2e(export_for_quantization(core, example=example), quantizer)
