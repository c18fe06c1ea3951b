"""Measure one detector variant end to end and turn it into a results record (docs/method.md: records, measurement).

Every lesson and command measures the same way: COCO mAP through the kit's evaluator; params and non-zero params
of the detector; MACs of its exportable core at the size it receives one val image (after the
detector's own resize); the size of the artifact a user would ship (the
state_dict for torch eager, the ``.onnx`` file for ONNX Runtime, or whatever ``artifact`` names: an int8 ONNX file,
a compiled module); and end-to-end latency (transform + core + post-processing) at batch 1 on a real val image.
A variant measured against a baseline of the same :class:`Study` is timed *interleaved* with it
(:func:`compresskit.measure.compare_latency`), so its speed-up survives a busy machine.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from compresskit.engine import METRIC_NAMES, evaluate
from compresskit.harness.reuse import ReuseCache, dataset_identity, fingerprint
from compresskit.measure import (baseline_drifted, compare_latency, count_macs, count_nonzero_params, count_params,
                                 measure_latency, serialized_size)
from compresskit.models.core import EndToEndDetector, ExportableCore, core_input_size, example_batch
from compresskit.report import make_record
from compresskit.runtimes import Core, get_runtime
from compresskit.settings import latency_runs, reports_dir, threads as resolve_threads


def _evaluation_key(detector: nn.Module, core: Core, runtime: str, val_loader, label_map, threads: int) -> str | None:
    """Identity of what an evaluation measures: weights and settings, what the runtime says identifies the core
    (its :meth:`~compresskit.runtimes.Runtime.evaluation_identity`: e.g. the ONNX file's bytes), val images, label
    map; None when the core or the images cannot be identified."""
    identity = get_runtime(runtime).evaluation_identity(detector, core)
    images = dataset_identity(val_loader)
    if identity is None or images is None:
        return None
    return fingerprint(detector, "evaluate", runtime, threads, identity, images, repr(label_map))


def artifact_dir() -> Path:
    """Where exported files (ONNX cores) of the current run go: beside the results, never in the source tree."""
    return reports_dir() / "artifacts"


def runner_for(detector: nn.Module, record_id: str, runtime: str, core: Core | None = None,
               threads: int | None = None, artifacts: Path | None = None) -> tuple[EndToEndDetector, Any]:
    """The end-to-end callable measured for ``runtime`` and the file or object whose size is shipped.

    Without ``core``, the runtime builds its own from the detector
    (:meth:`~compresskit.runtimes.Runtime.core_for`; an exported file goes into ``artifacts``, default
    :func:`artifact_dir`).

    Returns:
        ``(runner, default artifact)``, the artifact being what the runtime ships for that core
        (:meth:`~compresskit.runtimes.Runtime.artifact`): the state_dict (the detector itself) for torch, the
        ``.onnx`` file for ONNX Runtime.

    Raises:
        UnknownRuntimeError: ``runtime`` is not registered (the message lists those that are).
    """
    chosen = get_runtime(runtime)
    if core is None:
        core = chosen.core_for(detector, threads=resolve_threads(threads), artifact_dir=artifacts or artifact_dir(),
                               record_id=record_id)
    return EndToEndDetector(detector, core), chosen.artifact(detector, core)


@dataclass
class Study:
    """Shared settings of one study (a lesson's measurements), so each variant is one short call.

    The first record measured becomes the baseline of the ones after it, unless a call names another record of
    this study. A variant with a baseline is timed interleaved with that baseline's runner (paired comparison);
    the record keeps its own median/p90 from those same runs and the paired speed-up with its interval.

    Args:
        lesson: the notebook or command the records belong to.
        model: preset name recorded with each record.
        profile: the data profile the detector *and* the data were actually loaded from.
        val_loader: evaluation loader; label_map: the detector's label <-> category-id mapping.
        threads: torch/ORT threads for latency (default: ``COMPRESSKIT_THREADS``, else 2).
        runs: timed runs (pairs for a comparison), >= 30 for a reported number (docs/method.md) (default: ``COMPRESSKIT_LATENCY_RUNS``, else 30).
        log: called with one line per measured record (``print`` for progress; None for silence).
        artifacts: where exported ONNX files go (default: :func:`artifact_dir`, beside ``COMPRESSKIT_REPORTS``).
        calibrations: keys of the activation ranges this study calibrated and keeps in a file for its later
            quantizations (see :func:`~compresskit.harness.quantization.quantize_for_study`).
        reuse: evaluations and quantizations shared with the other studies of a run (``compresskit reproduce``
            hands one :class:`~compresskit.harness.reuse.ReuseCache` to each); None: this study computes all its
            own.
        earlier: records an interrupted run of the same study (same settings) finished, by id: :meth:`measure`
            keeps such a record as it is instead of measuring it again (see :meth:`is_kept`).
        on_record: called with each record as soon as it is measured (e.g. to write it to ``results.json``, so an
            interruption loses only the record being measured); not called for kept records.
    """

    lesson: str
    model: str
    profile: str
    val_loader: Any
    label_map: Any
    threads: int | None = None
    runs: int | None = None
    progress: bool = False
    baseline: str | None = None
    records: list[dict] = field(default_factory=list)
    log: Callable[[str], None] | None = None
    runners: dict[str, Callable] = field(default_factory=dict, repr=False)
    artifacts: Path | None = None
    calibrations: set[str] = field(default_factory=set, repr=False)
    reuse: ReuseCache | None = field(default=None, repr=False)
    earlier: dict[str, dict] = field(default_factory=dict, repr=False)
    on_record: Callable[[dict], None] | None = field(default=None, repr=False)
    _medians: dict[str, float] = field(default_factory=dict, repr=False)  # latency medians measured in this run

    def __post_init__(self) -> None:
        if self.runs is None:
            self.runs = latency_runs()
        self.threads = resolve_threads(self.threads)

    @classmethod
    def of(cls, lesson: str, loaded, val_images: int | None = None, **settings: Any) -> Study:
        """A study of ``loaded`` (see :func:`~compresskit.harness.load_for_study`): its preset, profile, label map
        and val split (the first ``val_images`` only, when given); ``settings`` are the other fields."""
        from compresskit.harness.loading import val_loader

        return cls(lesson=lesson, model=loaded.name, profile=loaded.profile,
                   val_loader=val_loader(loaded, val_images), label_map=loaded.label_map, **settings)

    @property
    def records_by_id(self) -> dict[str, dict]:
        return {record["id"]: record for record in self.records}

    def example_image(self):
        return self.val_loader.dataset[0][0]

    def measure(self, detector: nn.Module, record_id: str, technique: str, runtime: str = "torch-eager",
                variant: str = "", baseline: str | None = None, core: Any = None, artifact: Any = None,
                model: str | None = None, label_map: Any = None, train_seconds: float | None = None,
                config: Any = None, evaluate_map: bool = True, runs: int | None = None,
                recorded_metrics: dict | None = None, warmup: int = 5, stand_in_weights: bool = False) -> dict:
        """Evaluate and measure ``detector`` as one record, keep it, and return it. The detector is put in eval
        mode; its weights are not touched.

        Args:
            record_id: unique id, e.g. ``"pruning/teacher/structured-50/eager"``.
            technique: a ``report.TECHNIQUES`` name.
            runtime: a registered runtime (:func:`compresskit.runtimes.runtime_names`): ``torch-eager`` runs the
                detector's own core; ``onnxruntime`` exports the core to ONNX (unless ``core`` is given) and runs
                it in an ONNX Runtime session; ``torch-compile`` compiles a copy of the fp32 core (unless ``core``
                is given, e.g. a PT2E int8 graph).
            baseline: id of an earlier record of this study to compare against (default: the study's first).
            core: a ready core callable (e.g. an ``OnnxCore`` of an int8 file) to evaluate and time instead.
            artifact: what a user ships, measured for size (a path, bytes, an ``nn.Module``, an ONNX model);
                default: the runtime's (the ONNX file for ``onnxruntime``, the detector's state_dict for torch).
            model, label_map: preset name and label map when they differ from the study's (e.g. the student in the
                baseline study).
            evaluate_map: False for a variant too slow to evaluate (its mAP fields stay None: not measured).
            runs: timed runs for this record only (default: the study's); warmup: untimed calls of each side
                first (fewer for a variant whose single call takes seconds).
            recorded_metrics: the mAP metrics a training run measured on the weights it wrote, for a variant whose
                checkpoint is not shipped (``detector`` then has the same architecture, untrained): nothing is
                evaluated, and the record's config says where its mAP comes from.
            stand_in_weights: ``detector`` (or ``core``) has the variant's architecture but not its weights (implied
                by ``recorded_metrics``): params, MACs, raw size and latency hold, the gzip size would not (it
                depends on the values), so it is left None.
        """
        baseline = baseline or self.baseline
        if baseline is not None and baseline not in self.runners:
            raise ValueError(f"baseline {baseline!r} is not a record of this study; measure it first, in this run")
        detector.eval()
        if self.is_kept(record_id):
            # Rebuilt only when a later variant is timed against it: an export, no evaluation, no timing.
            return self.keep(record_id, runner=lambda: runner_for(detector, record_id, runtime, core=core,
                                                                  threads=self.threads, artifacts=self.artifacts)[0])
        runner, default_artifact = runner_for(detector, record_id, runtime, core=core, threads=self.threads,
                                                  artifacts=self.artifacts)
        if recorded_metrics is not None:
            metrics = {key: recorded_metrics[key] for key in METRIC_NAMES}
            config = {**_as_dict(config), "map_source": "training record (checkpoint not shipped)"}
        elif evaluate_map:
            metrics = self._evaluate(runner, detector, runtime, record_id, label_map or self.label_map)
            config = {**_as_dict(config), "map_source": self.map_source()}
        else:
            metrics = None
        image = self.example_image()
        hw = tuple(image.shape[-2:])
        core_size = core_input_size(detector, image)  # MACs at what the core sees, after the detector's resize
        paired = None
        if baseline is None:
            latency = measure_latency(runner, [image], runs=runs or self.runs, threads=self.threads, warmup=warmup)
        else:
            comparison = compare_latency(self._runner(baseline), runner, [image], pairs=runs or self.runs,
                                         threads=self.threads, warmup=warmup)
            latency, paired = comparison.candidate, comparison.as_record(baseline)
            alone = self._medians.get(baseline)  # the baseline's own median, when this run measured it
            if alone:
                paired["baseline_drift"] = round(comparison.baseline.median_ms / alone, 3)
                paired["noisy"] = paired["noisy"] or baseline_drifted(comparison.baseline.median_ms, alone)
        record = make_record(
            id=record_id, lesson=self.lesson, technique=technique, model=model or self.model, runtime=runtime,
            profile=self.profile, metrics=metrics, variant=variant, baseline=baseline,
            params=count_params(detector), nonzero_params=count_nonzero_params(detector),
            macs=count_macs(ExportableCore(detector), example_batch(core_size)), macs_input=core_size,
            size=serialized_size(artifact if artifact is not None else default_artifact,
                                 gzip_too=not (stand_in_weights or recorded_metrics is not None)),
            latency=latency.as_record(hw), paired_latency=paired, train_seconds=train_seconds, config=config)
        self.baseline = self.baseline or record_id
        self.runners[record_id] = runner
        self._medians[record_id] = latency.median_ms
        self.records = [r for r in self.records if r["id"] != record_id] + [record]
        if self.on_record is not None:
            self.on_record(record)
        if self.log is not None:
            self.log(describe(record))
        return record

    def map_source(self) -> str:
        """What this study's mAPs are measured on, as a record's ``config.map_source`` says it: the whole val split
        or a slice of it (tables mark a slice's mAP, which compares only with mAPs on the same slice)."""
        dataset = self.val_loader.dataset
        whole = getattr(dataset, "dataset", None)  # a torch Subset: the first N images of the split
        if whole is not None and len(dataset) < len(whole):
            return f"val slice (first {len(dataset)} of {len(whole)} images)"
        return f"whole val split ({len(dataset)} images)"

    def is_kept(self, record_id: str) -> bool:
        """Whether ``record_id`` was finished by an interrupted earlier run of this study (see ``earlier``): a
        caller skips the work that only that record needs (a calibration, a fine-tune) and calls :meth:`keep`."""
        return record_id in self.earlier

    def keep(self, record_id: str, runner: Callable[[], Callable] | None = None) -> dict:
        """Take the earlier run's record ``record_id`` into this study as it is, and return it.

        Args:
            runner: builds the variant's end-to-end runner if a later variant is timed against this one; None when
                no variant uses it as a baseline (asking for it then is an error that says so).
        """
        record = self.earlier[record_id]
        self.baseline = self.baseline or record_id
        self.runners[record_id] = _Deferred(record_id, runner)
        self.records = [r for r in self.records if r["id"] != record_id] + [record]
        if self.log is not None:
            self.log(f"{describe(record)}  (kept from the interrupted run)")
        return record

    def _runner(self, record_id: str) -> Callable:
        runner = self.runners[record_id]
        if isinstance(runner, _Deferred):
            runner = self.runners[record_id] = runner.build()
        return runner

    def _evaluate(self, runner: EndToEndDetector, detector: nn.Module, runtime: str, record_id: str,
                  label_map: Any) -> dict:
        if self.reuse is None:
            return evaluate(runner, self.val_loader, label_map, progress=self.progress, desc=f"evaluate {record_id}")
        key = _evaluation_key(detector, runner.core, runtime, self.val_loader, label_map, self.threads)
        earlier = self.reuse.recall(key)
        if earlier is not None:
            source, metrics = earlier
            if self.log is not None:
                self.log(f"  {record_id}: same weights, runtime file and val images as {source}; "
                         "its evaluation is reused")
            return dict(metrics)
        metrics = evaluate(runner, self.val_loader, label_map, progress=self.progress, desc=f"evaluate {record_id}")
        self.reuse.remember(key, record_id, dict(metrics))
        return metrics


def _as_dict(config: Any) -> dict:
    """A record's config as a dict to add to (configs come as mappings or dataclasses)."""
    if config is None:
        return {}
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)


@dataclass
class _Deferred:
    """The runner of a kept record, built only when a later variant is timed against it."""

    record_id: str
    factory: Callable[[], Callable] | None

    def build(self) -> Callable:
        if self.factory is None:
            raise ValueError(f"{self.record_id} was kept from an earlier run without a way to rebuild its runner; "
                             "pass runner= to Study.keep to time other variants against it")
        return self.factory()


def describe(record: dict) -> str:
    """One progress line for a measured record: id, mAP (0-1), median latency and the paired speed-up."""
    latency = record.get("latency_ms") or {}
    accuracy = "not measured" if record["map"] is None else f"{record['map']:.3f}"
    text = f"  {record['id']:44s} mAP {accuracy}  {latency.get('median', float('nan')):7.1f} ms"
    if latency.get("noisy"):
        text += " (noisy)"
    paired = record.get("paired_latency")
    if paired:
        low, high = paired["interval"]
        text += f"  x{paired['speedup']:.2f} [{low:.2f}-{high:.2f}] vs {paired['baseline']}"
    return text

