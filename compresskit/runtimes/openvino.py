"""``openvino``: the core exported to ONNX, converted to an OpenVINO model and run by OpenVINO's CPU plugin; ships
the IR (the ``.xml`` graph and its ``.bin`` weights).

The compile settings are part of the measurement (see :func:`compile_settings`). One of them matters more than it
looks: on a CPU with bf16 instructions (AVX-512 BF16, AMX) OpenVINO runs float models in bf16 unless told
otherwise, which changes both the speed and the detections. The kit pins f32, so an ``openvino`` fp32 record is an
fp32 measurement on every CPU, and an int8 record's float islands stay in f32 too. ``openvino`` itself is imported
only when a core is built.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Hashable, Iterator

import numpy as np
import torch
from torch import nn

from compresskit import settings
from compresskit.errors import CompressKitError
from compresskit.models.core import ExportableCore, export_core_onnx
from compresskit.runtimes.base import Core, Runtime

INFERENCE_PRECISION = "f32"  # see the module docstring: OpenVINO's default is bf16 where the CPU has it


def require_openvino() -> Any:
    """The ``openvino`` module, or one message saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise CompressKitError("the openvino runtime needs OpenVINO: pip install 'openvino>=2026.4'") from None
    return openvino


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept for the life of the process: a compiled model and its infer
    request must not outlive the Core that made them, and one Core starts the CPU plugin once."""
    return require_openvino().Core()


class _SignalStack(ctypes.Structure):
    """``stack_t`` of ``sigaltstack(2)`` on Linux."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _sigaltstack() -> Any:
    return ctypes.CDLL(None, use_errno=True).sigaltstack if sys.platform.startswith("linux") else None


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Run OpenVINO (or NNCF, which compiles models of its own) and give the calling thread back its alternate
    signal stack afterwards.

    Why: when OpenVINO's CPU plugin starts an engine it installs an alternate signal stack of its own on the
    calling thread and leaves it there, and that memory does not live as long as the process. Python runs its
    signal handlers on the alternate stack, so a signal that arrives later (a data-loader worker's SIGCHLD at the
    end of a training epoch) found freed memory and the kernel killed the process with SIGSEGV: a test run lost
    a worker this way after the OpenVINO tests. Only Linux is handled; elsewhere this does nothing.
    """
    sigaltstack = _sigaltstack()
    if sigaltstack is None:
        yield
        return
    before = _SignalStack()
    sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        now = _SignalStack()
        sigaltstack(None, ctypes.byref(now))
        if (now.ss_sp, now.ss_size, now.ss_flags) != (before.ss_sp, before.ss_size, before.ss_flags):
            sigaltstack(ctypes.byref(before), None)


def compile_model(model: Any, config: dict[str, Any]) -> Any:
    """``model`` (an ``openvino.Model`` or the path of an IR) compiled for the CPU with ``config``, by the
    process's one Core, with the thread's signal stack kept (see :func:`signal_stack_kept`)."""
    core = openvino_core()
    with signal_stack_kept():
        return core.compile_model(core.read_model(str(model)) if isinstance(model, (str, Path)) else model, "CPU",
                                  config)


def compile_settings(threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin's settings for a core, set up like the other runtimes of a latency comparison: ``threads``
    inference threads (default: :func:`compresskit.settings.threads`), the latency hint (one stream, one request
    at a time: batch-1 latency, as the other runtimes are timed) and f32 inference precision."""
    return {"INFERENCE_NUM_THREADS": settings.threads(threads), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION}


def weights_path(xml_path: Path | str) -> Path:
    """The ``.bin`` file that holds the weights of the IR graph ``xml_path``."""
    return Path(xml_path).with_suffix(".bin")


def save_ir(model: Any, xml_path: Path | str) -> Path:
    """Write an OpenVINO model as IR (``xml_path`` and its ``.bin``), weights kept as they are (OpenVINO would
    halve float weights to fp16 by default: the file would no longer be the fp32 model it claims to be). Both
    files are written beside their final names first and renamed into place, so a failure leaves neither half."""
    ov = require_openvino()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".compresskit-ir-", dir=xml_path.parent) as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(model, str(staged), compress_to_fp16=False)
        weights_path(staged).replace(weights_path(xml_path))
        staged.replace(xml_path)
    return xml_path


def onnx_to_ir(onnx_path: Path | str, xml_path: Path | str) -> Path:
    """Convert an ONNX core to IR with OpenVINO's converter (``openvino.convert_model``); returns ``xml_path``."""
    ov = require_openvino()
    return save_ir(ov.convert_model(str(onnx_path)), xml_path)


class OpenVinoCore:
    """An OpenVINO compiled model behind the core interface: ``batch tensor -> tuple of torch tensors``.

    Args:
        xml_path: the IR graph (its weights in the ``.bin`` beside it).
        threads: inference threads (default: :func:`compresskit.settings.threads`).
    """

    def __init__(self, xml_path: Path | str, threads: int | None = None) -> None:
        self.path = Path(xml_path)
        self.threads = settings.threads(threads)
        self.compiled = compile_model(self.path, compile_settings(self.threads))
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)

    @classmethod
    def of_compiled(cls, compiled: Any, threads: int | None = None) -> OpenVinoCore:
        """A core around a model compiled elsewhere (NNCF's accuracy control compiles each candidate itself);
        it has no file, so it can be evaluated but not shipped or measured for size."""
        core = cls.__new__(cls)
        core.path, core.threads, core.compiled = None, settings.threads(threads), compiled
        core.request = compiled.create_infer_request()
        core.outputs = list(compiled.outputs)
        return core

    @property
    def files(self) -> tuple[Path, Path]:
        """What ships: the graph and its weights."""
        return self.path, weights_path(self.path)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = self.request.infer({0: np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)})
        # The request reuses its output buffers on the next call: copy them out.
        return tuple(torch.from_numpy(np.array(results[output], copy=True)) for output in self.outputs)


def _file_name(record_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", record_id) + ".xml"


class OpenVinoRuntime(Runtime):
    """Exports the detector's core to ONNX, converts it to ``artifact_dir/<record id>.xml`` (+ ``.bin``), or reads
    a given IR (e.g. an int8 one from NNCF), and runs it with :func:`compile_settings`."""

    name = "openvino"

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("openvino")
        except PackageNotFoundError:
            return "not installed"

    def core_for(self, detector: nn.Module, *, threads: int, artifact_dir: Path, record_id: str) -> Core:
        xml_path = Path(artifact_dir) / _file_name(record_id)
        with tempfile.TemporaryDirectory(prefix="compresskit-ov-") as tmp:
            exported = export_core_onnx(ExportableCore(detector), Path(tmp) / "core.onnx")
            onnx_to_ir(exported, xml_path)
        return OpenVinoCore(xml_path, threads=threads)

    def core_from_artifact(self, artifact: Any, *, threads: int) -> Core:
        return OpenVinoCore(artifact, threads=threads)

    def core_threads(self, core: Core) -> int | None:
        return core.threads if isinstance(core, OpenVinoCore) else None

    def artifact(self, detector: nn.Module, core: Core) -> Any:
        return core.files if isinstance(core, OpenVinoCore) else detector

    def evaluation_identity(self, detector: nn.Module, core: Core) -> Hashable | None:
        # The IR is what runs (an int8 IR differs from the detector's weights): its bytes identify it.
        if not isinstance(core, OpenVinoCore):
            return None
        digest = hashlib.sha256()
        for path in core.files:
            digest.update(path.read_bytes())
        return digest.hexdigest(), core.threads, INFERENCE_PRECISION
