"""The measuring harness: a variant becomes a record (``variant``), one study per lesson (``baselines``,
``pruning``), and ``reproduce``, which runs them all. Lessons call the studies step by step; ``reproduce`` calls
them whole, so an experiment exists once. Loading goes through ``loading`` so records carry the profile that was
actually loaded.
"""

from compresskit.harness.baselines import baseline_study, bench_baselines
from compresskit.harness.loading import Loaded, load_for_study, train_split, val_loader
from compresskit.harness.pruning import measure_structured, measure_unstructured, pruning_study
from compresskit.harness.reproduce import STUDIES, reproduce
from compresskit.harness.variant import Study, describe, runner_for

__all__ = ["Loaded", "STUDIES", "Study", "baseline_study", "bench_baselines", "describe", "load_for_study",
           "measure_structured", "measure_unstructured", "pruning_study", "reproduce", "runner_for", "train_split",
           "val_loader"]
