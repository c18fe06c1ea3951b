"""``onnxruntime``: the core exported to ONNX and run in an ONNX Runtime CPU session; ships the ``.onnx`` file.

The session options are part of the measurement (see :func:`onnxruntime_session`). ``onnxruntime`` itself is
imported only when a session is built.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch
from torch import nn

from compresskit import settings
from compresskit.models.core import ExportableCore, export_core_onnx
from compresskit.runtimes.base import Core, Runtime


def onnxruntime_session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session set up like the torch side of a latency comparison: ``threads`` intra-op
    threads (default: :func:`compresskit.settings.threads`), one inter-op thread, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin after each run by default. In an interleaved comparison the idle session's spinning
    # threads steal the cores from the one being timed (measured: the teacher's fp32 core 58 ms with spinning, 40 ms
    # without; the paired interval of pruned vs unpruned narrowed from [2.11-3.43] to [2.91-2.98]).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxCore:
    """An ONNX Runtime session behind the core interface: ``batch tensor -> tuple of torch tensors``.

    A file exported for a fixed batch of 1 (fixed shapes let the shape plumbing fold away, see
    ``compresskit.quantize``) still takes a batch: its images run one at a time and the outputs are concatenated.
    """

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = settings.threads(threads)
        self.session = onnxruntime_session(path, self.threads)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None

    def _run(self, batch: torch.Tensor) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch.numpy(), dtype=np.float32)})

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.fixed_batch == 1 and batch.shape[0] > 1:
            pieces = [self._run(batch[index:index + 1]) for index in range(batch.shape[0])]
            return tuple(torch.from_numpy(np.concatenate(parts)) for parts in zip(*pieces))
        return tuple(torch.from_numpy(output) for output in self._run(batch))


def _file_name(record_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", record_id) + ".onnx"


class OnnxRuntime(Runtime):
    """Exports the detector's core to ``artifact_dir/<record id>.onnx`` (or reads a given ``.onnx`` file, e.g. an
    int8 one) and runs it in :func:`onnxruntime_session`."""

    name = "onnxruntime"

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("onnxruntime")
        except PackageNotFoundError:
            return "not installed"

    def core_for(self, detector: nn.Module, *, threads: int, artifact_dir: Path, record_id: str) -> Core:
        path = export_core_onnx(ExportableCore(detector), Path(artifact_dir) / _file_name(record_id))
        return OnnxCore(path, threads=threads)

    def core_from_artifact(self, artifact: Any, *, threads: int) -> Core:
        return OnnxCore(artifact, threads=threads)

    def core_threads(self, core: Core) -> int | None:
        return core.threads if isinstance(core, OnnxCore) else None

    def artifact(self, detector: nn.Module, core: Core) -> Any:
        return core.path if isinstance(core, OnnxCore) else detector

    def evaluation_identity(self, detector: nn.Module, core: Core) -> Hashable | None:
        # The file is what runs (an int8 file differs from the detector's weights): its bytes identify it.
        if not isinstance(core, OnnxCore):
            return None
        return hashlib.sha256(core.path.read_bytes()).hexdigest(), core.threads
