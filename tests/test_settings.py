"""Settings from environment variables, the kit's error types, and the config checks at the boundary."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from compresskit import settings
from compresskit.errors import CompressKitError, ConfigError


@pytest.mark.parametrize("value, expected", [(None, "embedded"), ("", "embedded"), ("  COCO ", "coco"),
                                             ("Embedded", "embedded")])
def test_profile_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(settings.PROFILE_ENV, raising=False)
    else:
        monkeypatch.setenv(settings.PROFILE_ENV, value)
    assert settings.profile() == expected


def test_an_unknown_profile_is_a_config_error_naming_the_choices(monkeypatch):
    monkeypatch.setenv(settings.PROFILE_ENV, "cocoa")
    with pytest.raises(ConfigError) as raised:
        settings.profile()
    message = str(raised.value)
    assert "COMPRESSKIT_PROFILE='cocoa'" in message and "embedded, coco" in message
    # One type for the CLI (CompressKitError: message, exit 2) and for callers that catch ValueError.
    assert isinstance(raised.value, CompressKitError) and isinstance(raised.value, ValueError)


def test_folders_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.REPORTS_ENV, str(tmp_path / "reports"))
    monkeypatch.setenv(settings.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(settings.COCO_ROOT_ENV, str(tmp_path / "coco"))
    assert settings.reports_dir() == tmp_path / "reports"
    assert settings.data_root() == tmp_path / "data"
    assert settings.coco_root() == tmp_path / "coco"


def test_folder_defaults(monkeypatch, tmp_path):
    for name in (settings.REPORTS_ENV, settings.DATA_ENV, settings.COCO_ROOT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # From a checkout, lessons run in notebooks/ still write to the checkout's top-level runs/ (git-ignored).
    root = Path(settings.__file__).resolve().parents[1]
    assert settings.reports_dir() == root / "runs"
    assert (root / ".gitignore").read_text().count("runs/") >= 1
    assert settings.data_root() == tmp_path / "cache" / "compresskit" / "data"
    assert settings.coco_root() is None


def test_threads_come_from_the_environment_and_default_to_two(monkeypatch):
    import torch

    from compresskit import measure
    from compresskit.harness import Study

    monkeypatch.delenv(settings.THREADS_ENV, raising=False)
    assert settings.threads() == 2
    monkeypatch.setenv(settings.THREADS_ENV, "1")
    assert settings.threads() == 1
    # Where a call names no thread count, the setting decides, and the measurement says so.
    assert measure.measure_latency(torch.nn.Identity(), torch.zeros(1), warmup=0, runs=2).threads == 1
    assert Study(lesson="x", model="m", profile="embedded", val_loader=None, label_map=None).threads == 1
    assert measure.measure_latency(torch.nn.Identity(), torch.zeros(1), warmup=0, runs=2, threads=2).threads == 2
    monkeypatch.setenv(settings.THREADS_ENV, "two")
    with pytest.raises(ConfigError, match="COMPRESSKIT_THREADS='two'"):
        settings.threads()


def test_seed_everything_repeats_python_numpy_and_torch():
    import numpy as np
    import torch

    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    settings.seed_everything(7)
    first = draw()
    settings.seed_everything(7)
    assert draw() == first
    settings.seed_everything(8)
    assert draw() != first


def test_settings_import_without_torch():
    # The CLI reads the profile before any command runs; that must not cost torch's import time.
    code = "import sys, compresskit.settings; print('torch' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_scratch_dir_is_removed_when_the_process_ends(tmp_path):
    code = ("from compresskit.settings import scratch_dir\n"
            "work = scratch_dir('probe'); (work / 'checkpoint.pt').write_text('x'); print(work)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    work = Path(result.stdout.strip())
    assert work.parent == tmp_path and work.name.startswith("compresskit-probe-")
    assert not work.exists(), "a lesson's scratch folder outlived its kernel"


# --------------------------------------------------------------------------------------------- pruning configs
def test_structured_config_accepts_its_whole_range():
    from compresskit.prune.structured import StructuredConfig

    config = StructuredConfig(ratio=0.0, part_ratios={"layer4": 0.99, "head": 0}, round_to=0, importance="random",
                              image_size=64)
    assert StructuredConfig(**config.to_json()) == config  # round-trips through JSON-able fields


def test_a_structured_config_edited_after_creation_is_checked_again():
    from compresskit.prune.structured import StructuredConfig, prune_structured_

    config = StructuredConfig()
    config.ratio = 1.0
    with pytest.raises(ConfigError, match="ratio"):  # before the (here bogus) detector is even looked at
        prune_structured_(object(), config)


def test_unstructured_config_accepts_both_ends():  # the values it refuses: tests/test_configs.py
    import torch
    from torch import nn

    from compresskit.prune.unstructured import UnstructuredConfig, conv_sparsity, prune_unstructured_

    def two_convs() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))

    untouched = two_convs()
    assert conv_sparsity(prune_unstructured_(untouched, UnstructuredConfig(amount=0.0))) == 0.0
    assert all(torch.equal(conv.weight, reference.weight) for conv, reference in zip(untouched, two_convs()))
    assert conv_sparsity(prune_unstructured_(two_convs(), UnstructuredConfig(amount=1, scope="layer"))) == 1.0


def test_shown_path_is_relative_inside_the_checkout(tmp_path):
    root = Path(settings.__file__).resolve().parents[1]
    assert settings.shown_path(root / "runs" / "results.json") == str(Path("runs") / "results.json")
    assert settings.shown_path(tmp_path / "results.json") == str(tmp_path / "results.json")


def test_shown_path_writes_the_home_folder_as_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings.shown_path(tmp_path / ".cache" / "w.pth") == str(Path("~") / ".cache" / "w.pth")


def test_known_library_notices_are_dropped_and_other_records_pass(caplog):
    import logging

    # In a fresh process, importing the kit's quantization room and then torchao prints no pytree notice.
    script = "import compresskit.quantize\nimport torchao.quantization.pt2e.quantize_pt2e\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Enum subclass" not in result.stderr

    settings.quiet_library_notices()
    settings.quiet_library_notices()  # idempotent: one filter per notice
    for name, fragment in settings.QUIET_NOTICES:
        logger = logging.getLogger(name)
        assert sum(isinstance(f, settings._DropNotice) for f in logger.filters) == 1
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=name):
            logger.warning("[0/0] %s ... and so on", fragment)
            logger.warning("some other notice")
        assert [record.getMessage() for record in caplog.records] == ["some other notice"]
