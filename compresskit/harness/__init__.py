"""The measuring harness: a variant becomes a record (``variant``), one study per lesson (``baselines``,
``pruning``, ``quantization``, ``distillation``, ``backbones``, ``combined`` with the article's snippets in
``errata``; ``own_data`` for a dataset of your own), and
``reproduce``, which runs them all. Lessons call the studies step by step; ``reproduce`` calls them whole, so an
experiment exists once. Loading goes through ``loading`` so records carry the profile that was actually loaded.
"""

from compresskit.harness.backbones import backbone_study
from compresskit.harness.baselines import baseline_study, bench_baselines
from compresskit.harness.combined import combined_study
from compresskit.harness.coverage import COCO_GAPS, study_profile
from compresskit.harness.distillation import distillation_study
from compresskit.harness.loading import Loaded, load_for_study, load_trained, train_split, training_record, val_loader
from compresskit.harness.own_data import DatasetStudyConfig, dataset_study
from compresskit.harness.pruning import measure_structured, measure_unstructured, pruning_study
from compresskit.harness.figures import draw_figures
from compresskit.harness.reproduce import STUDIES, check_results, reproduce
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.targets import TARGETS, check_targets
from compresskit.harness.variant import Study, describe, runner_for

__all__ = ["COCO_GAPS", "DatasetStudyConfig", "Loaded", "ReuseCache", "STUDIES", "Study", "TARGETS", "backbone_study",
           "baseline_study", "bench_baselines", "check_results", "check_targets", "combined_study", "dataset_study",
           "describe", "distillation_study", "draw_figures", "load_for_study", "load_trained", "measure_structured",
           "measure_unstructured", "pruning_study", "reproduce", "runner_for", "study_profile", "train_split",
           "training_record", "val_loader"]
