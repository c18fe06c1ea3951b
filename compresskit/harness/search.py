"""``compresskit search``: the fastest detector within an accuracy budget, across the techniques the kit teaches.

A candidate is a chain: a starting detector (the given one, or for the teacher also its shipped BatchNorm-head
twin, whose head quantizes whole), structured pruning with one ratio per part group (trunk, FPN, head), a
recovery fine-tune with or without distillation from the unpruned detector, then the fp32 core and an int8 core
for every registered int8 runtime. Optuna proposes the chains and keeps its study in a SQLite file in the output
folder, which is what makes a search resumable; ``--storage`` points several machines at one shared database.

Why the strategy is sound, in short:

- **Cheap proxies first** (successive halving with two rungs). Each chain is fine-tuned for a few steps and scored
  on a val slice; Optuna's median pruner stops a chain whose proxy loss is worse than the median of the chains that
  went on (after the first few, which always go on). A chain that prunes and distils nothing has no proxy rung: it
  is not fine-tuned, and its zero loss in the median would stop every cut. A few steps rank chains by how much they
  broke long before they say how far each recovers, so the proxy is used to rank, never to judge the budget. Only
  the survivors get the full fine-tune, the whole val split and the int8 cores.
- **One number per chain for the sampler.** Optuna's TPE sampler minimises a chain's score: the objective of its
  best variant within the budget, relative to the fp32 detector's (1.0 is no gain), or, when no variant is within
  the budget, 1 plus a tenth of the excess points, so feasible chains always rank first.
- **Seeds from what is known.** The first chains are enqueued by hand: int8 alone (the feasible floor), 30 %
  everywhere (about a 2x MACs cut) with and without distillation, a lighter cut with distillation.
- **Every number is a record.** Each measured variant is a results record paired with the fp32 detector's ONNX
  Runtime core measured in the same run; the front, the choice and the summary are drawn from the records
  (never from a proxy), and a resumed search keeps the records it finished.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from compresskit.data.split import map_resolution_points
from compresskit.errors import ConfigError
from compresskit.harness.auto_int8 import AUTO, Int8Settings, check_budget, int8_runtimes, measure_int8_candidates
from compresskit.harness.loading import Loaded, load_for_study, train_split, val_loader
from compresskit.harness.variant import Study

OBJECTIVES = ("latency", "size", "macs")
PART_GROUPS = ("trunk", "fpn", "head")  # the parts a chain prunes at its own ratio; the trunk is every stage
RATIOS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
# What a chain's int8 cores keep in float (ONNX node-name prefixes, as the quantizers' ``exclude``): nothing, or the
# whole head (tower and prediction convs: the part whose outputs the boxes and scores come from directly). Every
# detector the kit builds or loads has a ``head`` module, so the choice means the same for all of them.
KEEP_FLOAT = {"none": (), "head": ("/head/",)}
PROXY_STARTUP_CHAINS = 3  # fine-tuned chains that always reach the full rung: the median needs something to compare
RESOLUTION_POINTS = 0.5  # the val split must be able to show a mAP difference this small (see check_val_split)
LESSON = "search"


@dataclass(frozen=True)
class SearchConfig:
    """What ``compresskit search`` explores and how long; recorded with every record of the search.

    Attributes:
        max_map_drop: the budget, in mAP points (0-100 scale) against the fp32 detector measured in the run.
        objective: what the chosen variant minimises: ``latency`` (paired, against the fp32 ONNX Runtime core),
            ``size`` (bytes shipped) or ``macs``.
        time_budget_minutes: no new chain starts once the time left is less than a chain has taken so far.
        max_trials: at most this many chains (None: as many as the time allows).
        runtimes: the int8 runtimes tried on each survivor (``auto``: every registered one).
        proxy_steps, full_steps: fine-tune steps of the two rungs (batch ``batch_size``); each rung fine-tunes
            the pruned detector from its start, so a replay needs ``full_steps`` only.
        proxy_val_images: the val slice of the proxy rung.
        calibration_images: int8 calibration images. runs: timed pairs per record. seed: Optuna's and the
            fine-tunes'.
    """

    max_map_drop: float = 1.0
    objective: str = "latency"
    time_budget_minutes: float = 60.0
    max_trials: int | None = None
    runtimes: tuple[str, ...] | str = AUTO
    proxy_steps: int = 60
    full_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    proxy_val_images: int = 100
    calibration_images: int = 64
    runs: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget(self.max_map_drop)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not isinstance(self.time_budget_minutes, (int, float)) or not self.time_budget_minutes > 0:
            raise ConfigError(f"--time-budget is in minutes, above 0, got {self.time_budget_minutes!r}")
        if self.runtimes != AUTO:
            unknown = [name for name in self.runtimes if name not in int8_runtimes()]
            if unknown or not self.runtimes:
                raise ConfigError(f"unknown int8 runtime(s) {', '.join(unknown) or '(none given)'}; choose among "
                                  f"{', '.join(int8_runtimes())}, or auto for all of them")
        for name in ("proxy_steps", "full_steps", "batch_size", "proxy_val_images", "calibration_images", "runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.full_steps < self.proxy_steps:
            raise ConfigError(f"full_steps ({self.full_steps}) must be at least proxy_steps ({self.proxy_steps}): "
                              "the proxy is the cheap rung")

    def int8(self) -> tuple[str, ...]:
        return int8_runtimes() if self.runtimes == AUTO else tuple(self.runtimes)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "runtimes": list(self.int8())}


@dataclass
class Recipe:
    """One chain, enough to rebuild it step by step (``compresskit search --replay recipe.json``)."""

    detector: str  # the detector searched (its fp32 core is the yardstick)
    source: str  # the preset or shipped detector the chain starts from
    checkpoint: str | None  # a checkpoint file of ``detector`` instead of the shipped one
    part_ratios: dict[str, float]
    kd: bool
    proxy_steps: int
    full_steps: int
    batch_size: int
    lr: float
    seed: int
    runtime: str  # the runtime of the chosen variant ("onnxruntime" for the fp32 core, or an int8 runtime)
    int8: bool
    calibration_images: int
    data: str | None = None  # the split folder of a dataset of your own (None: the profile's data)
    trial: int | None = None
    keep_float: list[str] = field(default_factory=list)  # parts the int8 core keeps in float (``KEEP_FLOAT``)
    # An unpruned chain without distillation has nothing to recover, so a search keeps it as it is (False). Recipes
    # written before this field fine-tuned every chain; reading one without it keeps that, so its replay rebuilds
    # the same detector.
    fine_tune_unpruned: bool = True
    stages: list[dict] = field(default_factory=list)  # what each step cost and gained, from the records

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path: Path | str) -> Recipe:
        """A recipe file written by a search, or one message saying why it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            names = {item.name for item in dataclasses.fields(cls)}
            return cls(**{key: value for key, value in data.items() if key in names})
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"{path} is not a recipe written by compresskit search ({error}); pass the "
                              "recipe.json of a search's output folder") from None


def _trunk_parts(detector: nn.Module) -> list[str]:
    from compresskit.prune.structured import detector_parts

    return [name for name in detector_parts(detector) if name not in ("fpn", "head")]


def part_groups(detector: nn.Module) -> tuple[str, ...]:
    """The groups of :data:`PART_GROUPS` that ``detector`` has (an SSD has a trunk only: no FPN, and its head
    is a list of prediction convs, which pruning leaves alone)."""
    from compresskit.prune.structured import detector_parts

    parts = set(detector_parts(detector))
    return tuple(group for group in PART_GROUPS if group == "trunk" or group in parts)


def part_ratios_for(detector: nn.Module, trunk: float, fpn: float = 0.0, head: float = 0.0) -> dict[str, float]:
    """The kit's per-part ratios (``StructuredConfig.part_ratios``) of a chain's group ratios (a group the
    detector lacks must be 0)."""
    ratios = {name: trunk for name in _trunk_parts(detector)}
    for group, ratio in (("fpn", fpn), ("head", head)):
        if ratio > 0 and group not in part_groups(detector):
            raise ConfigError(f"{type(detector).__name__} has no {group} to prune; its groups are "
                              f"{', '.join(part_groups(detector))}")
        ratios[group] = ratio
    return {name: ratio for name, ratio in ratios.items() if ratio > 0}


def starting_points(name: str) -> tuple[str, ...]:
    """Where a chain may start: the detector itself and, for the teacher, its shipped BatchNorm-head twin."""
    from compresskit.models import shipped_checkpoint

    twin = f"{name}_bnhead"
    return (name, twin) if shipped_checkpoint(twin).is_file() else (name,)


def build_chain(start: nn.Module, recipe: Recipe, teacher: nn.Module, train_set, work_dir: Path, steps: int,
                progress: bool = False) -> tuple[nn.Module, float]:
    """A pruned copy of ``start`` fine-tuned ``steps`` steps (with distillation from ``teacher`` when the recipe
    says so: ``distill.default_method``'s, logits and features for FCOS, boxes for any other detector). Resumes
    from ``work_dir``. Returns the detector (eval mode) and the training seconds."""
    from compresskit.distill import KDConfig, default_method, distillation
    from compresskit.engine import Splits, TrainConfig, train_detector
    from compresskit.prune import StructuredConfig, prune_structured_

    detector = copy.deepcopy(start)
    if not recipe.part_ratios and not recipe.kd and not recipe.fine_tune_unpruned:
        return detector.eval(), 0.0  # nothing pruned, nothing to distil: the start as it is
    if recipe.part_ratios:
        prune_structured_(detector, StructuredConfig(ratio=0.0, part_ratios=dict(recipe.part_ratios)))
    steps_per_epoch = max(1, -(-len(train_set) // recipe.batch_size))
    epochs = -(-steps // steps_per_epoch)
    train_config = TrainConfig(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed,
                               warmup_iters=min(50, steps // 5), workers=0)
    extra = distillation(copy.deepcopy(teacher), KDConfig(method=default_method(teacher))) if recipe.kd else None
    result = train_detector(detector, Splits(train_set), train_config, work_dir, extra_training=extra,
                            deployed_head=True, max_iters_per_epoch=-(-steps // epochs), progress=progress,
                            log=lambda message: None)
    return detector.eval(), round(result["train_seconds"], 1)


@dataclass
class SearchResult:
    """What a search wrote: the kit's study (every record), the chosen record (None: no variant within the
    budget), the recipe of the chosen chain and the output files."""

    study: Study
    chosen: dict | None
    recipe: Recipe | None
    files: dict[str, Path]


def _settings_key(loaded: Loaded, config: SearchConfig, checkpoint: Path | None) -> str:
    identity = {"detector": loaded.name, "checkpoint": None if checkpoint is None else _digest(checkpoint),
                "profile": loaded.profile, **config.as_dict()}
    if loaded.data_dir is not None:  # another dataset in the same folder is another search
        identity["data"] = [_digest(loaded.data_dir / "annotations" / f"instances_{split}.json")
                            for split in ("train", "val")]
    identity.pop("time_budget_minutes")  # more time for the same search is a resume, not another search
    identity.pop("max_trials")
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_val_split(dataset) -> None:
    """Refuse a val split too small to judge a budget: one box found or missed must move mAP by less than
    ``RESOLUTION_POINTS``, or a variant's loss is luck."""
    boxes = sum(1 for annotation in dataset.coco.anns.values() if not annotation.get("iscrowd"))
    needed = math.ceil(100 / RESOLUTION_POINTS)
    if map_resolution_points(boxes) > RESOLUTION_POINTS:
        raise ConfigError(f"the val split has {len(dataset)} images and {boxes} boxes: one box more or less found "
                          f"moves its mAP by about {map_resolution_points(boxes):.1f} points, too coarse to judge a "
                          f"{RESOLUTION_POINTS}-point difference. A search needs at least {needed} val boxes: split "
                          "more images into val (compresskit data split --val-fraction) or label more")


def _seconds_per_step(start: nn.Module, train_set, config: SearchConfig, work_dir: Path) -> float:
    """Seconds one fine-tune step of the unpruned start takes here (two steps, timed): the time budget's unit."""
    recipe = Recipe(detector="", source="", checkpoint=None, part_ratios={}, kd=False, proxy_steps=2, full_steps=2,
                    batch_size=config.batch_size, lr=config.lr, seed=config.seed, runtime="", int8=False,
                    calibration_images=config.calibration_images)
    began = time.perf_counter()
    build_chain(start, recipe, start, train_set, work_dir, steps=2)
    return (time.perf_counter() - began) / 2


def search(name: str, out: Path | str, config: SearchConfig | None = None, *, checkpoint: Path | str | None = None,
           data_dir: Path | str | None = None, profile: str | None = None, storage: str | None = None,
           restart: bool = False, progress: bool = False, log: Callable[[str], None] | None = print) -> SearchResult:
    """Search chains of ``name`` (a preset or shipped detector; ``checkpoint`` for a file of it, and ``data_dir``
    for the split folder of a dataset of your own it was fine-tuned on) for the fastest variant within
    ``config.max_map_drop`` mAP points of the fp32 detector, measured in this run.

    Writes into ``out``: ``results.json`` (every record, written as it is measured), ``search.db`` (Optuna's
    study, unless ``storage`` names another database), ``front_<objective>.png``, ``recipe.json``,
    ``summary.md`` and the chosen variant's artifact in ``chosen/``. Run again with the same arguments, it resumes:
    finished records and trials are kept; other settings are refused unless ``restart``.
    """
    import optuna

    from compresskit.data.files import atomic_write_bytes
    from compresskit.models import load_checkpoint, shipped_checkpoint
    from compresskit.report import read_results, write_records

    config = config or SearchConfig()
    out = Path(out)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    loaded = load_for_study(name, profile, checkpoint=checkpoint, data_dir=data_dir)
    full_val = val_loader(loaded)
    check_val_split(full_val.dataset)
    train_set, calibration_set = train_split(loaded), train_split(loaded, augment=False)
    if config.calibration_images > len(calibration_set):  # a small export of your own: calibrate on all of it
        config = dataclasses.replace(config, calibration_images=len(calibration_set))
    key = _settings_key(loaded, config, checkpoint)
    earlier = {} if restart else _earlier(out, key)
    with tempfile.TemporaryDirectory(prefix="compresskit-search-") as scratch:  # nothing in OUT before the checks
        step_seconds = _seconds_per_step(loaded.model, train_set, config, Path(scratch))
    # a chain: two fine-tunes, evaluations, the int8 cores and their timing; the fine-tunes dominate
    estimate = step_seconds * (config.proxy_steps + config.full_steps) * 1.3 + 20 * (1 + len(config.int8()))
    if estimate > config.time_budget_minutes * 60:
        raise ConfigError(f"one chain takes about {estimate / 60:.1f} minutes here ({step_seconds:.2f} s per "
                          f"fine-tune step, {config.proxy_steps} + {config.full_steps} steps); give --time-budget "
                          f"{math.ceil(estimate / 60)} or more, or fewer steps")
    if restart and storage is None:
        (out / "search.db").unlink(missing_ok=True)
    study = Study(lesson=LESSON, model=loaded.name, profile=loaded.profile, val_loader=full_val,
                  label_map=loaded.label_map, runs=config.runs, progress=progress, log=log,
                  artifacts=out / "artifacts", earlier=earlier,
                  on_record=lambda record: write_records([record], reports_dir=out))
    shared = {"search": config.as_dict(), "search_key": key}
    yardstick = study.measure(loaded.model, f"search/{loaded.name}/ort-fp32", technique="baseline",
                              runtime="onnxruntime", variant="the fp32 detector, ONNX Runtime (the yardstick)",
                              config=shared)
    starts = {start: (loaded.model if start == loaded.name else load_checkpoint(shipped_checkpoint(start))[0])
              for start in (starting_points(loaded.name) if checkpoint is None else (loaded.name,))}
    proxy_val = val_loader(loaded, config.proxy_val_images)
    work = out / "work"
    proxy_reference = _proxy_map(loaded.model, proxy_val, loaded.label_map)
    kd_choices = [False, True]  # FCOS distils location by location, any other detector through boxes
    groups = part_groups(loaded.model)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        start = trial.suggest_categorical("start", list(starts))
        ratios = {group: trial.suggest_categorical(f"ratio_{group}", list(RATIOS)) if group in groups else 0.0
                  for group in PART_GROUPS}
        kd = trial.suggest_categorical("kd", kd_choices)
        keep_float = KEEP_FLOAT[trial.suggest_categorical("keep_float", list(KEEP_FLOAT))]
        recipe = Recipe(detector=loaded.name, source=start,
                        checkpoint=None if checkpoint is None else str(checkpoint),
                        part_ratios=part_ratios_for(starts[start], ratios["trunk"], ratios["fpn"], ratios["head"]),
                        kd=kd, proxy_steps=config.proxy_steps, full_steps=config.full_steps,
                        batch_size=config.batch_size, lr=config.lr, seed=config.seed, runtime="onnxruntime",
                        int8=False, calibration_images=config.calibration_images,
                        data=None if loaded.data_dir is None else str(loaded.data_dir), trial=trial.number,
                        keep_float=list(keep_float), fine_tune_unpruned=False)
        prefix = f"search/{loaded.name}/t{trial.number:03d}"
        if log is not None:
            log(f"chain {trial.number}: start {start}, ratios {ratios}, {'with' if kd else 'without'} KD, int8 "
                f"keeping {', '.join(keep_float) or 'nothing'} in float ({_time_left(began, config):.0f} min left)")
        if _fine_tuned(recipe):
            proxy, _ = build_chain(starts[start], recipe, loaded.model, train_set, work / f"t{trial.number}-proxy",
                                   config.proxy_steps, progress=progress)
            proxy_drop = 100 * (proxy_reference - _proxy_map(proxy, proxy_val, loaded.label_map))
            trial.set_user_attr("proxy_drop_points", round(proxy_drop, 3))
            trial.report(proxy_drop, step=0)  # the proxy rung: compared with the other fine-tuned chains' proxies
            if trial.should_prune():
                if log is not None:
                    log(f"  pruned at the proxy rung: {proxy_drop:.2f} points lost on {config.proxy_val_images} "
                        f"val images after {config.proxy_steps} steps, worse than the median chain's")
                raise optuna.TrialPruned()
            if log is not None:
                log(f"  proxy rung: {proxy_drop:.2f} points lost on {config.proxy_val_images} val images after "
                    f"{config.proxy_steps} steps; full rung: {config.full_steps} steps, then every runtime")
        elif log is not None:
            # No proxy rung and no report: a chain that was not fine-tuned loses nothing there, and counted in the
            # median it would stop every cut that loses more than nothing.
            log("  nothing pruned, nothing to distil: no fine-tune; every runtime")
        detector, seconds = build_chain(starts[start], recipe, loaded.model, train_set,
                                        work / f"t{trial.number}-full", config.full_steps, progress=progress)
        tuned = (f"{config.full_steps}-step fine-tune {'with' if kd else 'without'} KD" if _fine_tuned(recipe)
                 else "not fine-tuned")
        variant = f"{start}, pruned {ratios}, {tuned}; " + (f"int8 keeps {', '.join(keep_float)} in float; "
                                                            if keep_float else "")
        common = {**shared, "recipe": recipe.as_dict()}
        records = [study.measure(detector, f"{prefix}/ort-fp32", technique="combined", runtime="onnxruntime",
                                 baseline=yardstick["id"], model=loaded.name, variant=f"{variant}fp32 core",
                                 train_seconds=seconds, config=common)]
        settings = Int8Settings(calibration_images=config.calibration_images, seed=config.seed,
                                threads=study.threads, any_shape=loaded.profile != "embedded", keep_float=keep_float)
        usable = int8_runtimes(settings.any_shape, keep_float=bool(keep_float))
        for record, build in measure_int8_candidates(
                study, detector, calibration_set, out / "artifacts" / f"t{trial.number:03d}", yardstick["id"], prefix,
                runtimes=[runtime for runtime in config.int8() if runtime in usable],
                settings=settings, technique="combined", model=loaded.name, variant=variant, config=common):
            if build is not None and not build.files:  # bytes (a torch.export program): kept to ship
                atomic_write_bytes(out / "artifacts" / f"t{trial.number:03d}-{build.label}-int8.pt2", build.artifact)
            records.append(record)
        best = _best(records, yardstick, config)
        trial.set_user_attr("records", [record["id"] for record in records])
        trial.set_user_attr("best", best["id"])
        trial.set_user_attr("map_drop_points", round(_values(best, yardstick, config)[0], 3))
        return _score(best, yardstick, config)

    began = time.monotonic()
    # The kit logs each chain itself; Optuna's own lines (a failed trial's traceback among them) are not for users.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'search.db').resolve()}"
    rdb = _open_storage(url)
    optuna_study = optuna.create_study(study_name=f"compresskit-search-{key}", storage=rdb, load_if_exists=True,
                                       direction="minimize",
                                       sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=4),
                                       pruner=optuna.pruners.MedianPruner(
                                           n_startup_trials=0, n_min_trials=PROXY_STARTUP_CHAINS))
    if not optuna_study.trials:
        for seed in _seeds(list(starts), groups=groups):
            # Workers started together may both find the study empty; the second one's seeds are then skipped.
            optuna_study.enqueue_trial(seed, skip_if_exists=True)
    durations: list[float] = []

    def stop_when_no_time(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.datetime_complete and trial.datetime_start:
            durations.append((trial.datetime_complete - trial.datetime_start).total_seconds())
        done = sum(1 for item in study_.trials if item.state.is_finished())
        if log is not None and trial.state == optuna.trial.TrialState.COMPLETE:
            best = study_.best_trial
            log(f"  chain {trial.number}: score {trial.value:.3f} (best so far: chain {best.number}, "
                f"{best.user_attrs.get('best')}, score {best.value:.3f}, {best.user_attrs.get('map_drop_points')} "
                f"points lost); {done} chains done, {_time_left(began, config):.0f} min left")
        left = config.time_budget_minutes * 60 - (time.monotonic() - began)
        if left < (max(durations) if durations else estimate) or (config.max_trials and done >= config.max_trials):
            study_.stop()

    finished = sum(1 for trial in optuna_study.trials if trial.state.is_finished())
    if config.max_trials is None or finished < config.max_trials:
        optuna_study.optimize(objective, callbacks=[stop_when_no_time],
                              n_trials=None if config.max_trials is None else config.max_trials - finished)
    shutil.rmtree(work, ignore_errors=True)
    return _finish(study, yardstick, config, out, loaded, read_results(out))


def _time_left(began: float, config: SearchConfig) -> float:
    return max(0.0, config.time_budget_minutes - (time.monotonic() - began) / 60)


def _proxy_map(detector: nn.Module, loader, label_map) -> float:
    from compresskit.engine import evaluate

    return evaluate(detector.eval(), loader, label_map, progress=False)["map"]


def _open_storage(url: str, attempts: int = 5):
    """Optuna's database for the search. Workers started at the same moment on a new database race to create its
    tables (one of them fails on the schema's version row); the loser opens it again once the winner is done."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            # A chain whose process died (a laptop closed, a killed worker) stops beating; the next run queues it
            # again. Optuna marks heartbeats experimental: the kit relies on them knowingly, so their notice stays
            # out of the output.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, heartbeat_interval=60, grace_period=180,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
            if storage.engine.dialect.name == "sqlite":
                _serialize_sqlite(storage.engine)
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _fine_tuned(recipe: Recipe) -> bool:
    """Whether ``build_chain`` fine-tunes the recipe's chain."""
    return bool(recipe.part_ratios) or recipe.kd or recipe.fine_tune_unpruned


def _serialize_sqlite(engine) -> None:
    """Make every transaction on a SQLite study take the write lock when it begins. SQLite ignores the row locks
    Optuna asks for, so two workers could both read a queued chain as waiting and both run it; with ``BEGIN
    IMMEDIATE`` the second one reads it after the first took it (SQLAlchemy's recipe for serializable SQLite)."""
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # the driver's own BEGIN would come too late

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners would keep the driver's behaviour


def _seeds(starts: list[str], kd: bool = True, groups: tuple[str, ...] = PART_GROUPS) -> list[dict]:
    """The first chains, enqueued: no pruning (int8 alone, the feasible floor; not fine-tuned, so it costs the
    int8 builds only), then 30 % everywhere (about a 2x MACs cut) with and without KD, from the last start (the
    BatchNorm head where there is one); then int8 alone with the head kept in float, a light cut with KD and a
    lighter head, and the same from the other start. Without ``kd``, the same chains without KD; only the ratios of
    ``groups`` (the detector's); each chain once; int8 keeps nothing in float unless said."""
    last = starts[-1]
    unpruned = {"start": last, "ratio_trunk": 0.0, "ratio_fpn": 0.0, "ratio_head": 0.0, "kd": False}
    seeds = [unpruned]
    seeds += [{"start": last, "ratio_trunk": 0.3, "ratio_fpn": 0.3, "ratio_head": 0.3, "kd": with_kd}
              for with_kd in (True, False)]
    seeds.append({**unpruned, "keep_float": "head"})
    seeds += [{"start": start, "ratio_trunk": 0.2, "ratio_fpn": 0.2, "ratio_head": 0.0, "kd": True}
              for start in reversed(starts)]
    kept = [{"keep_float": "none"} | {key: value for key, value in seed.items()
                                       if not key.startswith("ratio_") or key[6:] in groups}
            | ({} if kd else {"kd": False}) for seed in seeds]
    unique = {tuple(sorted(seed.items())): seed for seed in kept}
    return list(unique.values())


def _objective_value(record: dict, yardstick: dict, config: SearchConfig) -> float:
    from compresskit.report import compare

    if config.objective == "size":
        return float(record["size_bytes"])
    if config.objective == "macs":
        return float(record["macs"])
    return 1.0 / compare(record, yardstick)["latency_speedup"]  # latency as a share of the yardstick's


def _score(record: dict, yardstick: dict, config: SearchConfig) -> float:
    """What Optuna minimises for a chain: the objective (relative to the yardstick's, so 1.0 is no gain) when the
    chain's best variant is within the budget; above 1, growing with the excess points, when it is not. So every
    feasible chain ranks before every infeasible one, and among infeasible ones the nearer is better."""
    drop, value = _values(record, yardstick, config)
    if drop <= config.max_map_drop:
        return value / _objective_value(yardstick, yardstick, config)
    return 1.0 + (drop - config.max_map_drop) / 10.0


def _values(record: dict, yardstick: dict, config: SearchConfig) -> tuple[float, float]:
    return 100 * (yardstick["map"] - record["map"]), _objective_value(record, yardstick, config)


def _best(records: list[dict], yardstick: dict, config: SearchConfig) -> dict:
    """The record that minimises the objective within the budget; the smallest mAP loss when none is within."""
    within = [record for record in records if _values(record, yardstick, config)[0] <= config.max_map_drop]
    if within:
        return min(within, key=lambda record: _objective_value(record, yardstick, config))
    return min(records, key=lambda record: _values(record, yardstick, config)[0])


def _earlier(out: Path, key: str) -> dict[str, dict]:
    from compresskit.report import read_results

    found = [record for record in read_results(out)["records"] if record["id"].startswith("search/")]
    other = [record for record in found if (record.get("config") or {}).get("search_key") != key]
    if other:
        raise ConfigError(f"{out} holds a search made with other settings (or another detector); rerun it with "
                          "those to resume, add --restart to start again here, or choose another --out")
    return {record["id"]: record for record in found}


def _finish(study: Study, yardstick: dict, config: SearchConfig, out: Path, loaded: Loaded,
            document: dict) -> SearchResult:
    """Mark the chosen record, and write the front, the recipe, the summary and the chosen artifact."""
    from compresskit.report import write_records

    records = [record for record in document["records"] if record["id"].startswith(f"search/{loaded.name}/t")]
    # A variant qualifies within the budget and ahead of the fp32 detector itself: one that is slower (or larger)
    # than the yardstick is no answer, however little it loses.
    baseline_value = _objective_value(yardstick, yardstick, config)
    within = [record for record in records if _values(record, yardstick, config)[0] <= config.max_map_drop
              and _objective_value(record, yardstick, config) < baseline_value]
    chosen = min(within, key=lambda record: _objective_value(record, yardstick, config), default=None)
    files: dict[str, Path] = {}
    recipe = None
    for record in records:  # one chosen record at a time, even after a resumed search
        if (record.get("config") or {}).pop("chosen", None) and record is not chosen:
            write_records([record], reports_dir=out)
    if chosen is not None:
        chosen["config"] = {**chosen["config"], "chosen": True}
        write_records([chosen], reports_dir=out)
        recipe = Recipe(**{**chosen["config"]["recipe"], "runtime": chosen["runtime"],
                           "int8": chosen["id"].endswith("-int8")})
        recipe.stages = _stages(chosen, yardstick, study)
        files["recipe"] = _write_json(out / "recipe.json", recipe.as_dict())
        files["artifact"] = _copy_artifacts([chosen], out / "chosen")
    # The front's int8 variants ahead of the chosen one on the objective (all of them when none was chosen) ship
    # too: the variants the budget ruled out, which `reproduce` re-measures to show whether they still miss it on
    # another CPU. The front's slower points and its fp32 cores (four times an int8 core) replay from their recipes.
    ruled_out = [record for record in _front(records, yardstick, config) if record["id"].endswith("-int8")
                 and (chosen is None or _objective_value(record, yardstick, config)
                      < _objective_value(chosen, yardstick, config))]
    files["front_artifacts"] = _copy_artifacts(ruled_out, out / "front")
    files["front"] = _plot_front(records + [yardstick], yardstick, chosen, config, out)
    files["summary"] = _write_summary(out, loaded, config, yardstick, records, chosen, recipe,
                                      document.get("environment"))
    if study.log is not None:
        front = _front(records, yardstick, config)
        study.log(f"{len(records)} variants measured, {len(front)} on the front; chosen: "
                  f"{chosen['id'] if chosen else 'none within the budget ahead of the fp32 detector'}")
    return SearchResult(study, chosen, recipe, files)


def _write_json(path: Path, payload: dict) -> Path:
    from compresskit.data.files import atomic_write_json

    return atomic_write_json(path, payload, indent=1)


def _stages(chosen: dict, yardstick: dict, study: Study) -> list[dict]:
    """The chain's steps as its records measured them: the pruned, fine-tuned fp32 core, then int8 if chosen."""
    from compresskit.report import compare

    prefix = chosen["id"].rsplit("/", 1)[0]
    by_id = {record["id"]: record for record in study.records}
    recipe = Recipe(**chosen["config"]["recipe"])
    built = ("pruned + fine-tuned" if recipe.part_ratios else "fine-tuned" if _fine_tuned(recipe)
             else "as it starts")
    int8 = f"int8, {', '.join(recipe.keep_float)} kept in float" if recipe.keep_float else "int8"
    stages = []
    for record_id, step in ((f"{prefix}/ort-fp32", f"{built}, fp32 core"), (chosen["id"], int8)):
        record = by_id.get(record_id)
        if record is None or (step == "int8" and record_id == f"{prefix}/ort-fp32"):
            continue
        ratios = compare(record, yardstick)
        stages.append({"step": step, "record": record_id, "runtime": record["runtime"],
                       "map_drop_points": round(ratios["map_drop_points"], 3),
                       "speedup": round(ratios["latency_speedup"], 3), "size_ratio": round(ratios["size_ratio"], 3),
                       "macs_ratio": round(ratios["macs_ratio"], 3), "train_seconds": record.get("train_seconds")})
    return stages


def _front(records: list[dict], yardstick: dict, config: SearchConfig) -> list[dict]:
    """The records on the Pareto front of the objective against the mAP lost."""
    from compresskit.report import pareto_frontier

    points = [(_objective_value(record, yardstick, config), -_values(record, yardstick, config)[0])
              for record in records]
    return [records[index] for index in pareto_frontier(points)]


def _copy_artifacts(records: list[dict], target: Path) -> Path:
    """The shipped file(s) of each of ``records`` (an IR's ``.xml`` with its ``.bin``), copied from the search's
    ``artifacts/`` into ``target``, which holds nothing else afterwards."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    folder = target.parent / "artifacts"
    for record in records:
        trial, last = record["id"].split("/")[-2:]
        for source in sorted(set(folder.glob(f"{trial}-{last}.*")) | set(folder.glob(f"*_{trial}_{last}.*"))):
            shutil.copyfile(source, target / source.name)
    return target


def _plot_front(records: list[dict], yardstick: dict, chosen: dict | None, config: SearchConfig, out: Path) -> Path:
    """mAP against the objective for every variant of the search: the frontier, the budget, the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compresskit.report import pareto_frontier

    points = [(_objective_value(record, yardstick, config), 100 * record["map"]) for record in records]
    labels = {"latency": "latency, share of the fp32 ONNX Runtime core's (paired)", "size": "bytes shipped",
              "macs": "MACs"}
    figure, ax = plt.subplots(figsize=(7.5, 4.8))
    runtimes = sorted({record["runtime"] for record in records})
    for runtime in runtimes:
        xs = [x for (x, _), record in zip(points, records) if record["runtime"] == runtime]
        ys = [y for (_, y), record in zip(points, records) if record["runtime"] == runtime]
        ax.scatter(xs, ys, label=runtime, alpha=0.8)
    front = sorted((points[index] for index in pareto_frontier(points)), key=lambda point: point[0])
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linewidth=1,
                label="Pareto frontier")
    floor = 100 * yardstick["map"] - config.max_map_drop
    ax.axhline(floor, color="tab:red", linestyle="--", linewidth=1,
               label=f"budget: {config.max_map_drop:g} points below fp32")
    reference = _objective_value(yardstick, yardstick, config) if config.objective != "latency" else 1.0
    ax.scatter([reference], [100 * yardstick["map"]], marker="*", s=140, color="grey", label="fp32, ONNX Runtime")
    if chosen is not None:
        x, y = _objective_value(chosen, yardstick, config), 100 * chosen["map"]
        ax.scatter([x], [y], s=220, facecolors="none", edgecolors="tab:red", linewidths=2, label="chosen")
    ax.set_xlabel(labels[config.objective])
    ax.set_ylabel("mAP x100")
    ax.set_title(f"compresskit search: {len(records)} variants")
    ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = out / f"front_{config.objective}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _write_summary(out: Path, loaded: Loaded, config: SearchConfig, yardstick: dict, records: list[dict],
                   chosen: dict | None, recipe: Recipe | None, environment: dict | None = None) -> Path:
    """``summary.md``: the budget, the chosen chain step by step, every variant measured and, for the teacher,
    the search's targets (met, missed by how much, or not measured on this kind of CPU)."""
    from compresskit.data.files import atomic_write_bytes
    from compresskit.harness.targets import TARGETS, check_targets
    from compresskit.report import compare

    tried = sorted({record["runtime"] for record in records if record["id"].endswith("-int8")})  # as measured
    lines = [f"# compresskit search: {loaded.name}", "",
             f"Budget: at most {config.max_map_drop:g} mAP points below the fp32 detector in ONNX Runtime "
             f"(mAP x100 {100 * yardstick['map']:.1f}, measured in this run); objective: {config.objective}; "
             f"int8 runtimes: {', '.join(tried) or 'none'}.", ""]
    if chosen is None or recipe is None:
        lines += [f"No variant stayed within the budget with a better {config.objective} than the fp32 detector's: "
                  "raise --max-map-drop, allow more fine-tuning steps, or search longer.", ""]
    else:
        ratios = compare(chosen, yardstick)
        lines += [f"**Chosen**: `{chosen['id']}` ({chosen['runtime']}): {ratios['latency_speedup']:.2f}x faster "
                  f"(paired), {ratios['size_ratio']:.1f}x smaller, {ratios['macs_ratio']:.2f}x fewer MACs, "
                  f"{ratios['map_drop_points']:.2f} mAP points lost. Replay: "
                  "`compresskit search --replay recipe.json`.", "",
                  f"1. start from `{recipe.source}`",
                  f"2. prune channels per part: {recipe.part_ratios or 'none'}",
                  (f"3. fine-tune {recipe.full_steps} steps (batch {recipe.batch_size}, lr {recipe.lr:g}) "
                   f"{'with distillation from the unpruned detector' if recipe.kd else 'without distillation'}"
                   if _fine_tuned(recipe) else "3. no fine-tune: nothing pruned, nothing to recover")]
        for number, stage in enumerate(recipe.stages, start=4):
            lines.append(f"{number}. {stage['step']} ({stage['runtime']}): {stage['speedup']:.2f}x faster, "
                         f"{stage['size_ratio']:.1f}x smaller, {stage['map_drop_points']:.2f} points lost")
        lines.append("")
    lines += ["| variant | runtime | mAP x100 | MACs G | size MB | faster (paired) | mAP lost |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for record in sorted(records, key=lambda item: item["id"]):
        ratios = compare(record, yardstick)
        mark = " (chosen)" if chosen is not None and record["id"] == chosen["id"] else ""
        lines.append(f"| `{record['id']}`{mark} | {record['runtime']} | {100 * record['map']:.1f} | "
                     f"{record['macs'] / 1e9:.2f} | {record['size_bytes'] / 1e6:.2f} | "
                     f"{ratios['latency_speedup']:.2f}x | {ratios['map_drop_points']:.2f} |")
    targets = [target for target in TARGETS if target.id.startswith("search-")]
    verdicts = check_targets({"environment": environment or {}, "records": records + [yardstick]}, targets)
    if any(verdict.status != "not measured" for verdict in verdicts):
        cpu = (environment or {}).get("cpu", "this CPU")
        lines += ["", f"Targets (on {cpu}, ISA {' '.join((environment or {}).get('isa', [])) or 'unknown'}):", ""]
        lines += [f"- {verdict.target.description}: **{verdict.text()}**"
                  + (f" (best: `{verdict.record}`)" if verdict.record else "") for verdict in verdicts]
    return atomic_write_bytes(out / "summary.md", ("\n".join(lines) + "\n").encode())


def replay(recipe_file: Path | str, out: Path | str, *, profile: str | None = None, runs: int = 30,
           progress: bool = False, log: Callable[[str], None] | None = print) -> dict:
    """Rebuild the chain of ``recipe_file`` (a search's ``recipe.json``) step by step and measure it against the
    fp32 detector's ONNX Runtime core, in this run. Writes ``out/results.json`` and the artifact in
    ``out/artifacts/``; returns the rebuilt variant's record (id ``replay/<detector>/<runtime>``)."""
    from compresskit.data.files import atomic_write_bytes
    from compresskit.models import load_checkpoint, shipped_checkpoint
    from compresskit.report import write_records

    recipe = Recipe.read(recipe_file)
    out = Path(out)
    loaded = load_for_study(recipe.detector, profile, checkpoint=recipe.checkpoint, data_dir=recipe.data)
    start = (loaded.model if recipe.source == recipe.detector
             else load_checkpoint(shipped_checkpoint(recipe.source))[0])
    study = Study(lesson=LESSON, model=loaded.name, profile=loaded.profile, val_loader=val_loader(loaded),
                  label_map=loaded.label_map, runs=runs, progress=progress, log=log, artifacts=out / "artifacts")
    yardstick = study.measure(loaded.model, f"replay/{loaded.name}/ort-fp32", technique="baseline",
                              runtime="onnxruntime", variant="the fp32 detector, ONNX Runtime (the yardstick)")
    work = out / "work"
    detector, seconds = build_chain(start, recipe, loaded.model, train_split(loaded), work, recipe.full_steps,
                                    progress=progress)
    config = {"recipe": recipe.as_dict(), "replay_of": str(recipe_file)}
    variant = f"replay of {Path(recipe_file).name}: "
    if recipe.int8:
        settings = Int8Settings(calibration_images=recipe.calibration_images, seed=recipe.seed,
                                threads=study.threads, any_shape=loaded.profile != "embedded",
                                keep_float=tuple(recipe.keep_float))
        [(record, build)] = measure_int8_candidates(
            study, detector, train_split(loaded, augment=False), out / "artifacts" / "replay", yardstick["id"],
            f"replay/{loaded.name}", runtimes=[recipe.runtime], settings=settings, technique="combined",
            variant=variant, config=config)
        if not build.files:
            atomic_write_bytes(out / "artifacts" / f"replay-{build.label}-int8.pt2", build.artifact)
    else:
        record = study.measure(detector, f"replay/{loaded.name}/ort-fp32-chain", technique="combined",
                               runtime="onnxruntime", baseline=yardstick["id"], variant=f"{variant}fp32 core",
                               train_seconds=seconds, config=config)
    write_records(study.records, reports_dir=out)
    shutil.rmtree(work, ignore_errors=True)
    return record


def reference_search_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                           progress: bool = False, log: Callable[[str], None] | None = None, reuse=None,
                           *, reference: Path | str) -> Study:
    """Re-measure a search's chosen variant, and the faster int8 variants of its front, from the files it shipped,
    without rerunning the search.

    Reads ``reference/recipe.json``, the file(s) in ``reference/chosen/`` (``reproduce`` passes the committed
    reference search, ``reports/search``) and those in ``reference/front/`` (absent in searches written before it
    existed), and measures the fp32 detector's ONNX Runtime core (the yardstick) and each variant's core, read from
    its artifact by its runtime, against it in this run. The detector around a core (its resize and box decoding;
    its MACs and parameters, which do not depend on weight values) is the variant's start pruned as its recipe says;
    the weights that compute are the artifact's. ``compresskit reproduce`` runs this as its ``search`` study, so the
    reference choice and front are re-measured on every CPU that reproduces the kit.

    Raises:
        ConfigError: ``reference`` has no recipe or not exactly one artifact in ``chosen/``.
    """
    from compresskit.harness.loading import require_embedded
    from compresskit.report import read_results

    reference = Path(reference)
    recipe = Recipe.read(reference / "recipe.json")
    artifacts = _artifacts(reference / "chosen")
    if len(artifacts) != 1:
        raise ConfigError(f"{reference / 'chosen'} should hold the chosen variant's one artifact (an .onnx, an "
                          f"OpenVINO .xml with its .bin, or a .pt2), found {[path.name for path in artifacts]}")
    loaded = load_for_study(recipe.detector, profile)
    require_embedded(loaded, "reference search's variants")
    study = Study(lesson=LESSON, model=loaded.name, profile=loaded.profile, runs=runs, progress=progress, log=log,
                  val_loader=val_loader(loaded, val_images), label_map=loaded.label_map, reuse=reuse)
    yardstick = study.measure(loaded.model, f"search/{loaded.name}/ort-fp32", technique="baseline",
                              runtime="onnxruntime", variant="the fp32 detector, ONNX Runtime (the yardstick)")
    by_id = {record["id"]: record for record in read_results(reference)["records"]}
    chosen = [record_id for record_id, record in by_id.items() if (record.get("config") or {}).get("chosen")]
    record_id = chosen[0] if chosen else f"search/{loaded.name}/chosen"  # the search's own id for it
    _measure_artifact(study, loaded, recipe, artifacts[0], record_id, yardstick, "the reference search's choice",
                      {"chosen": True, "artifact": f"chosen/{artifacts[0].name}"})
    for artifact in _artifacts(reference / "front"):
        trial, _, last = artifact.stem.partition("-")  # t003-ort-int8.onnx -> search/<detector>/t003/ort-int8
        front_id = f"search/{loaded.name}/{trial}/{last}"
        if front_id == record_id or front_id not in by_id:
            continue
        record = by_id[front_id]
        front_recipe = Recipe(**{**record["config"]["recipe"], "runtime": record["runtime"], "int8": True})
        _measure_artifact(study, loaded, front_recipe, artifact, front_id, yardstick, "on the reference search's "
                          "front", {"artifact": f"front/{artifact.name}"})
    return study


def _artifacts(folder: Path) -> list[Path]:
    """The variant files in ``folder`` (an OpenVINO IR counts by its ``.xml``); none when it does not exist."""
    return sorted(path for path in folder.glob("*") if path.suffix in (".onnx", ".xml", ".pt2"))


def _measure_artifact(study: Study, loaded: Loaded, recipe: Recipe, artifact: Path, record_id: str, yardstick: dict,
                      what: str, config: dict) -> dict:
    """Measure the core in ``artifact`` (a variant of ``recipe``) against ``yardstick``, as record ``record_id``."""
    from compresskit.models import load_checkpoint, shipped_checkpoint
    from compresskit.prune import StructuredConfig, prune_structured_
    from compresskit.runtimes import get_runtime

    detector = copy.deepcopy(loaded.model if recipe.source == recipe.detector
                             else load_checkpoint(shipped_checkpoint(recipe.source))[0])
    if recipe.part_ratios:
        prune_structured_(detector, StructuredConfig(ratio=0.0, part_ratios=dict(recipe.part_ratios)))
    runtime = get_runtime(recipe.runtime)
    core = runtime.core_from_artifact(artifact, threads=study.threads)
    label = "int8" if recipe.int8 else "fp32"
    return study.measure(detector.eval(), record_id, technique="combined", runtime=recipe.runtime,
                         baseline=yardstick["id"], core=core, artifact=runtime.artifact(detector, core),
                         variant=f"{what} ({recipe.source}, {label}), read from its artifact",
                         config={"recipe": recipe.as_dict(), **config})
