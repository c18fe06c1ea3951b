"""Runtimes: what runs a detector's core, and the one registry of them (``torch-eager``, ``torch-compile``,
``onnxruntime`` and ``openvino`` built in).

A :class:`Runtime` builds a core (``batch tensor -> tuple of tensors``) from a detector or from a file it ships,
says what a user ships for it and what makes two evaluations on it identical. Records, the harness and the
``compresskit`` command read :func:`runtime_names` and :func:`get_runtime`, so a runtime registered with
:func:`register_runtime` is measured, recorded and offered like the built-in ones. Introduced in
``01_baseline_detectors.ipynb``.
"""

from compresskit.runtimes.base import Core, Runtime
from compresskit.runtimes.onnxruntime import OnnxCore, OnnxRuntime, onnxruntime_session
from compresskit.runtimes.openvino import OpenVinoCore, OpenVinoRuntime
from compresskit.runtimes.registry import (UnknownRuntimeError, get_runtime, register_runtime, runtime_names,
                                           unregister_runtime)
from compresskit.runtimes.torch_compile import SingleImageCore, TorchCompile
from compresskit.runtimes.torch_eager import TorchEager

for _builtin in (TorchEager(), TorchCompile(), OnnxRuntime(), OpenVinoRuntime()):
    register_runtime(_builtin)
del _builtin

__all__ = ["Core", "OnnxCore", "OnnxRuntime", "OpenVinoCore", "OpenVinoRuntime", "Runtime", "SingleImageCore", "TorchCompile", "TorchEager",
           "UnknownRuntimeError", "get_runtime", "onnxruntime_session", "register_runtime", "runtime_names",
           "unregister_runtime"]
