"""Lessons 00 to 04 run to their end under ``COMPRESSKIT_PROFILE=coco``, offline (``coco_lessons`` says how and
what is checked); lessons 05 to 08 are in ``test_coco_profile_later_lessons.py``, so two workers share them. Where
``COMPRESSKIT_COCO_TINY`` names the real COCO sample, lesson 01 also runs on its photos (the test exists only
then: the suite needs no file beside the repository)."""

from __future__ import annotations

import pytest

from coco_lessons import LESSONS, coco_environments, run_under_coco
from offline_coco import real_coco_environment, real_coco_sample


@pytest.fixture(scope="module")
def offline_coco(tmp_path_factory):
    return coco_environments(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("lesson", [lesson for lesson in LESSONS if lesson < "05"])
def test_lesson_runs_to_its_end_under_the_coco_profile(lesson, offline_coco, tmp_path, monkeypatch):
    run_under_coco(lesson, offline_coco, tmp_path, monkeypatch)


if real_coco_sample() is not None:
    @pytest.mark.slow
    def test_lesson_01_runs_on_the_real_coco_sample(tmp_path_factory, tmp_path, monkeypatch):
        environment = real_coco_environment(tmp_path_factory.mktemp("real-coco"), real_coco_sample())
        run_under_coco("01_baseline_detectors", lambda images: environment, tmp_path, monkeypatch)
