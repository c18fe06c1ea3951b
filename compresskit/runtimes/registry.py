"""The one list of runtimes the kit measures: records, the harness and the command line all read it."""

from __future__ import annotations

from compresskit.errors import ConfigError
from compresskit.runtimes.base import Runtime

_RUNTIMES: dict[str, Runtime] = {}  # name -> runtime, in registration order (the order tables and legends use)


class UnknownRuntimeError(ConfigError):
    """A runtime name that is not registered; the message lists the registered ones."""


def register_runtime(runtime: Runtime) -> Runtime:
    """Make ``runtime`` measurable under ``runtime.name``; returns it. A second runtime with a taken name is
    refused (unregister the first)."""
    if not isinstance(runtime, Runtime) or not isinstance(runtime.name, str) or not runtime.name:
        raise ConfigError(f"a runtime is a Runtime instance with a non-empty name, got {runtime!r}")
    if runtime.name in _RUNTIMES and _RUNTIMES[runtime.name] is not runtime:
        raise ConfigError(f"runtime {runtime.name!r} is already registered; unregister_runtime it first")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def unregister_runtime(name: str) -> Runtime:
    """Remove runtime ``name`` from the registry and return it."""
    runtime = get_runtime(name)
    del _RUNTIMES[name]
    return runtime


def get_runtime(name: str) -> Runtime:
    """The registered runtime called ``name``.

    Raises:
        UnknownRuntimeError: no runtime has that name; the message lists those that do.
    """
    try:
        return _RUNTIMES[name]
    except (KeyError, TypeError):
        raise UnknownRuntimeError(f"unknown runtime {name!r}; the registered runtimes are "
                                  f"{', '.join(runtime_names())}") from None


def runtime_names() -> tuple[str, ...]:
    """Names of the registered runtimes, in registration order."""
    return tuple(_RUNTIMES)
