"""The long recovery fine-tune behind the shipped pruned teacher: prune the shipped teacher, fine-tune it through
the engine, and save it as architecture + state_dict. ``compresskit prune`` runs it; the lesson keeps a short
live fine-tune and loads the result of this one. Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from compresskit.data import load_split
from compresskit.data.files import atomic_write_json
from compresskit.engine import (VAL_SUBSET_IMAGES, TrainConfig, evaluate, fit, is_main_process, make_loader,
                                val_subset)
from compresskit.measure import environment_stamp
from compresskit.models import load_preset
from compresskit.models.presets import DetectorSpec, checkpoint_spec, shipped_checkpoint
from compresskit.prune.persist import load_pruned, save_pruned
from compresskit.prune.structured import StructuredConfig, core_macs, prune_structured_

SHIPPED_PRUNED = "teacher_pruned"
# Recipe of the shipped pruned teacher; rerun with `compresskit prune --preset teacher`.
PRUNE_RECIPE = StructuredConfig(ratio=0.5)
FINETUNE_RECIPE = TrainConfig(epochs=8, batch_size=16, lr=1e-3, warmup_iters=50, eval_every=2)


def prune_and_finetune(out_dir: Path | str, preset: str = "teacher", prune_config: StructuredConfig | None = None,
                       train_config: TrainConfig | None = None, data_dir: Path | str | None = None,
                       name: str = SHIPPED_PRUNED, max_iters_per_epoch: int | None = None,
                       progress: bool = True) -> Path:
    """Prune the shipped ``preset`` structurally, fine-tune it, and write ``out_dir/NAME.pt`` (+ ``.json``).

    The recorded mAPs are measured after reloading the fp16 file, i.e. on the weights as shipped.

    Returns:
        Path of the pruned checkpoint (load it with :func:`compresskit.prune.load_pruned`).
    """
    prune_config = prune_config or PRUNE_RECIPE
    train_config = train_config or FINETUNE_RECIPE
    out_dir = Path(out_dir)
    model, label_map, teacher_meta = load_preset(preset)
    spec: DetectorSpec = checkpoint_spec(shipped_checkpoint(preset))
    macs_before = core_macs(model, prune_config.image_size)
    prune_structured_(model, prune_config)
    train_set = load_split("train", data_dir, label_map=label_map)
    val_set = load_split("val", data_dir, label_map=label_map)
    val_loader = make_loader(val_set, batch_size=8, train=False)
    before = evaluate(model, val_loader, label_map, progress=progress)
    started = time.perf_counter()
    result = fit(model, train_set, val_loader, train_config, out_dir / f"{name}-run",
                 max_iters_per_epoch=max_iters_per_epoch, progress=progress)
    checkpoint = out_dir / f"{name}.pt"
    if not is_main_process():
        return checkpoint
    meta = {"preset": preset, "prune_config": asdict(prune_config), "train_config": asdict(train_config),
            "macs_before": macs_before, "macs_after": core_macs(model, prune_config.image_size),
            "map_before_finetune": before, "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_incl_eval": round(time.perf_counter() - started, 1), "history": result["history"],
            "command": "compresskit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            if sys.argv[0].endswith("compresskit") else None,
            "seed": train_config.seed, "teacher_val_metrics": teacher_meta.get("val_metrics"),
            "environment": environment_stamp()}
    save_pruned(checkpoint, model, spec, label_map, meta=meta, half=True)
    shipped, label_map, _ = load_pruned(checkpoint)
    meta["val_metrics"] = evaluate(shipped, val_loader, label_map, progress=progress)
    subset = make_loader(val_subset(val_set), batch_size=8, train=False)
    meta["val_subset"] = {"images": VAL_SUBSET_IMAGES, "metrics": evaluate(shipped, subset, label_map,
                                                                           progress=progress)}
    save_pruned(checkpoint, shipped, spec, label_map, meta=meta, half=True)
    atomic_write_json(out_dir / f"{name}.json", meta, indent=1)
    return checkpoint


def load_shipped_pruned(name: str = SHIPPED_PRUNED):
    """The pruned, fine-tuned teacher shipped in the package: ``(detector, label map, meta)``."""
    return load_pruned(shipped_checkpoint(name))
