"""The suite's guard against tutorial rot (``filterwarnings`` in pyproject.toml): deprecation and future warnings
from the taught libraries, or attributed to the kit's calls of them, are errors; other packages' are not."""

from __future__ import annotations

import warnings

import pytest

GUARDED = ("torch", "torch.ao.quantization", "torchvision.models", "torchao.quantization", "torch_pruning",
           "onnxruntime.quantization", "compresskit.quantize.ort")


def _warn_from(module: str, category: type[Warning]) -> None:
    warnings.warn_explicit("an API the lessons use is going away", category, filename=f"{module}.py", lineno=1,
                           module=module)


@pytest.mark.parametrize("module", GUARDED)
@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning, PendingDeprecationWarning])
def test_deprecations_from_the_taught_libraries_fail_the_test(module, category):
    with pytest.raises(category, match="going away"):
        _warn_from(module, category)


@pytest.mark.parametrize("module", ["numpy", "torchmetrics_like", "torchaudio", "matplotlib.pyplot",
                                    "tests.helpers"])
@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_other_packages_deprecations_stay_warnings(module, category):
    # Not pytest.warns: it switches every filter to "always" inside its block, so it would pass even if the
    # policy's module pattern were too wide (a bare ``torch`` also matches ``torchmetrics_like``). Recording with
    # the active filters kept is what shows the warning was let through rather than turned into an error.
    with warnings.catch_warnings(record=True) as caught:
        _warn_from(module, category)
    assert [type(w.message) for w in caught] == [category]


def test_the_article_snippets_still_capture_their_warnings():
    """The lessons run deprecated calls on purpose, recording their warnings instead of failing."""
    import torch

    from compresskit.quantize.dynamic import article_dynamic_quant

    result = article_dynamic_quant(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)))
    assert any("DeprecationWarning" in text for text in result.warnings)


def test_notebook_kernels_start_with_the_same_policy():
    """conftest.py hands the policy to every kernel (an IPython startup file), so a lesson's own call of a deprecated
    API fails its notebook test too."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import warnings\n"
        "warnings.warn_explicit('going away', DeprecationWarning, 'torch/x.py', 1, module='torch.nn.fake')")])
    with pytest.raises(CellExecutionError, match="DeprecationWarning"):
        NotebookClient(probe, timeout=120, kernel_name="python3").execute()


def test_scripts_run_in_a_fresh_interpreter_can_start_with_the_same_policy():
    """A test that runs Python in a subprocess (the DDP workers under torchrun) runs conftest's policy file
    first, so the libraries' deprecations fail there too."""
    import subprocess
    import sys

    script = ("import os, runpy, warnings\n"
              "runpy.run_path(os.environ['COMPRESSKIT_TEST_WARNING_POLICY'])\n"
              "warnings.warn_explicit('going away', DeprecationWarning, 'torch/x.py', 1, module='torch.nn.fake')\n")
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0 and "DeprecationWarning: going away" in finished.stderr
