"""Lessons 05 to 08 run to their end under ``COMPRESSKIT_PROFILE=coco``, offline (``coco_lessons`` says how and
what is checked); the backbone and combined studies say that they run on the embedded profile."""

from __future__ import annotations

import pytest

from coco_lessons import LESSONS, coco_environments, run_under_coco


@pytest.fixture(scope="module")
def offline_coco(tmp_path_factory):
    return coco_environments(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("lesson", [lesson for lesson in LESSONS if lesson >= "05"])
def test_lesson_runs_to_its_end_under_the_coco_profile(lesson, offline_coco, tmp_path, monkeypatch):
    run_under_coco(lesson, offline_coco, tmp_path, monkeypatch)
