"""Lightweight backbones: the same FCOS detector (FPN, head, input size of the teacher) on other trunks.

Every entry of :data:`BACKBONES` names a torchvision classification model (or the kit's own trunk) that
``compresskit.models.trunks`` turns into a stride 8/16/32 feature extractor; only the trunk changes, so a
comparison of backbones measures the trunks alone. Also here: what the article's ``mobilenet_v2(pretrained=True)``
does on current torchvision, and what the ``weights=`` API that replaced it offers. Introduced in
``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models.detection import FCOS

from compresskit.data import load_split
from compresskit.engine import TrainConfig, fit, is_main_process, make_loader, ship_checkpoint
from compresskit.engine.recipes import EVAL_BATCH_SIZE
from compresskit.errors import ConfigError, DownloadError
from compresskit.measure import count_macs, count_params
from compresskit.models import EMBEDDED_PRESETS, RESNET_BASIC, DetectorSpec, build_detector
from compresskit.models.core import ExportableCore, example_batch
from compresskit.models.presets import weights_dir
from compresskit.models.trunks import FEATURE_STRIDES
from compresskit.settings import seed_everything, shown_path


@dataclass(frozen=True)
class BackboneChoice:
    """One trunk on offer: what to build and what it accepts.

    ``model`` is a torchvision classification model name (or ``"resnet_basic"``, the kit's trunk), ``kwargs`` its
    extra constructor arguments, ``width_mult`` whether it takes a width multiplier, ``norm_layer`` whether its
    constructor takes a ``norm_layer`` (so its BatchNorm can be frozen).
    """

    model: str
    description: str
    kwargs: dict = field(default_factory=dict)
    width_mult: bool = False
    norm_layer: bool = True


BACKBONES: dict[str, BackboneChoice] = {
    "resnet_basic": BackboneChoice(RESNET_BASIC, "the teacher's trunk: BasicBlocks, dense 3x3", width_mult=True),
    "mobilenet_v2": BackboneChoice("mobilenet_v2", "inverted residuals (the article's)", width_mult=True),
    "mobilenet_v3_large": BackboneChoice("mobilenet_v3_large", "searched blocks, SE, hardswish", width_mult=True),
    "mobilenet_v3_small": BackboneChoice("mobilenet_v3_small", "MobileNetV3's smaller search result", width_mult=True),
    "shufflenet_v2_x1_0": BackboneChoice("shufflenet_v2_x1_0", "channel split and shuffle", norm_layer=False),
    "efficientnet_b0": BackboneChoice("efficientnet_b0", "MBConv blocks with SE and SiLU, compound scaled"),
    "regnet_x_400mf": BackboneChoice("regnet_x_400mf", "grouped-conv residual stages from a design space"),
}
TRAIN_RECIPE_BACKBONE = TrainConfig(epochs=8, batch_size=16, lr=2e-3, eval_every=2)  # the student's budget
IMAGENET = "imagenet"


def _choice(name: str) -> BackboneChoice:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def backbone_spec(name: str, num_classes: int = 7, width_mult: float | None = None, fpn_channels: int = 96,
                  head_convs: int = 4, weights: str | None = None) -> DetectorSpec:
    """The teacher's detector design (FPN, FCOS head, input size) on trunk ``name``.

    Args:
        name: a key of :data:`BACKBONES`.
        num_classes: classes including the background slot 0.
        width_mult: channel multiplier of the trunk (only where ``BACKBONES[name].width_mult``); for
            ``resnet_basic`` it scales the teacher's widths (rounded to multiples of 8).
        fpn_channels: width of every FPN level (the teacher's by default).
        head_convs: convolutions per FCOS head tower (the teacher's by default).
        weights: ``None`` for a trunk trained from scratch, ``"imagenet"`` for one started from ImageNet weights.

    Returns:
        The :class:`DetectorSpec` (build it with ``build_detector``).
    """
    choice = _choice(name)
    if width_mult is not None and not choice.width_mult:
        accepting = sorted(key for key, value in BACKBONES.items() if value.width_mult)
        raise ConfigError(f"{name!r} takes no width_mult; use width_mult=None or one of {accepting}")
    if width_mult is not None and not width_mult > 0:
        raise ConfigError(f"width_mult must be a positive number, got {width_mult}")
    if weights not in (None, IMAGENET):
        raise ConfigError(f"weights must be None (random init) or {IMAGENET!r}, got {weights!r}")
    teacher = EMBEDDED_PRESETS["teacher"]
    spec = replace(teacher, backbone=choice.model, backbone_kwargs=dict(choice.kwargs), num_classes=num_classes,
                   fpn_channels=fpn_channels, head_convs=head_convs)
    if choice.model == RESNET_BASIC:
        if width_mult is not None:
            spec = replace(spec, widths=[max(8, round(width * width_mult / 8) * 8) for width in teacher.widths])
    elif width_mult is not None:
        spec.backbone_kwargs["width_mult"] = float(width_mult)
    # From scratch the BatchNorms must learn their statistics, and a batch of 16 images of 320 px gives each
    # channel 16 x 40 x 40 samples even at stride 8: plenty. From ImageNet weights the stored statistics are the ones
    # the pretrained convolutions expect; noisy detection batches would drift them, so they stay frozen (as in
    # torchvision's detection references). ShuffleNetV2 takes no norm_layer, so its BatchNorm cannot be frozen.
    return replace(spec, frozen_bn=weights == IMAGENET and choice.norm_layer)


def load_imagenet_trunk_(detector: FCOS, name: str) -> FCOS:
    """Load torchvision's ImageNet weights (``DEFAULT``) of backbone ``name`` into ``detector``'s trunk, in place,
    from the local cache only: a missing file raises :class:`DownloadError`, a trunk of other shapes (a
    ``width_mult``) :class:`ConfigError`."""
    choice = _choice(name)
    if choice.model == RESNET_BASIC:
        raise ConfigError(f"{RESNET_BASIC!r} is the kit's own trunk and has no ImageNet weights; use weights=None")
    weights = get_model_weights(choice.model).DEFAULT
    cached = weights_dir() / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise DownloadError(f"ImageNet weights {weights} are not cached at {shown_path(cached)}; the kit does not "
                            f"download them. Fetch {weights.url} into that folder (or set COMPRESSKIT_WEIGHTS to a "
                            "folder holding checkpoints/), or use weights=None to train from scratch.")
    stored = torch.load(cached, map_location="cpu", weights_only=True)
    body = detector.backbone.body
    expected = body.state_dict()
    wrong = sorted(key for key, value in expected.items() if key not in stored or stored[key].shape != value.shape)
    if wrong:
        raise ConfigError(f"the ImageNet weights of {choice.model} do not fit this trunk ({len(wrong)} tensors "
                          f"missing or shaped differently, e.g. {wrong[0]}); they exist for width_mult=None only")
    body.load_state_dict({key: stored[key] for key in expected}, strict=True)
    return detector


def build_detector_with_backbone(name: str, num_classes: int = 7, width_mult: float | None = None,
                                 weights: str | None = None) -> FCOS:
    """The teacher's FCOS design on trunk ``name`` (see :func:`backbone_spec`), in training mode.

    Args:
        name: a key of :data:`BACKBONES`.
        num_classes: classes including the background slot 0.
        width_mult: trunk channel multiplier, where the backbone takes one.
        weights: ``None`` for random weights; ``"imagenet"`` loads torchvision's ImageNet weights (``DEFAULT``)
            into the trunk from torch hub's cache (or ``COMPRESSKIT_WEIGHTS``). The kit works offline, so a
            missing file raises :class:`DownloadError` saying where to put it instead of downloading.

    Returns:
        The detector; FPN and head are always randomly initialised.
    """
    spec = backbone_spec(name, num_classes=num_classes, width_mult=width_mult, weights=weights)
    detector = build_detector(spec)
    return load_imagenet_trunk_(detector, name) if weights == IMAGENET else detector


def article_pretrained_call() -> str:
    """Run the article's ``torchvision.models.mobilenet_v2(pretrained=True)`` and say what it did, verbatim.

    No download: torch hub points, for the call only, at a temporary folder holding an empty placeholder of every
    ``MobileNet_V2_Weights`` file, so the call reads a placeholder where it would download, and stops there.
    """
    enum = get_model_weights("mobilenet_v2")
    previous_dir = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (Path(hub) / "checkpoints").mkdir()
        for member in enum:
            (Path(hub) / "checkpoints" / Path(member.url).name).write_bytes(b"")
        torch.hub.set_dir(hub)
        try:
            torchvision.models.mobilenet_v2(pretrained=True)
            stopped = "it loaded without error"
        except Exception as exc:  # the placeholder, read where the real file would have been downloaded
            stopped = f"stopped here at the empty placeholder ({type(exc).__name__}: {exc})"
        finally:
            torch.hub.set_dir(previous_dir)
    lines = [f"torchvision {torchvision.__version__}: mobilenet_v2(pretrained=True) raised "
             f"{len(caught)} warning(s):"]
    lines += [f"  {warning.category.__name__}: {warning.message}" for warning in caught]
    chosen = re.search(rf"weights={enum.__name__}\.(\w+)", " ".join(str(w.message) for w in caught))
    if chosen and chosen.group(1) in enum.__members__:
        member = enum[chosen.group(1)]
        lines.append(f"Then it loads {enum.__name__}.{member.name} (ImageNet acc@1 "
                     f"{member.meta['_metrics']['ImageNet-1K']['acc@1']}) from {member.url} through torch hub, "
                     f"downloading {member.meta['_file_size']:.1f} MB when not cached; {stopped}.")
    return "\n".join(lines)


def weights_api_steps(name: str = "mobilenet_v2") -> dict:
    """What torchvision's ``weights=`` API tells about backbone ``name`` before any download.

    Returns:
        ``enum`` (its class name), ``members``, ``default`` (``DEFAULT``'s member name), ``call`` (the builder
        call that loads it), ``url``, ``cached`` (whether the file is in the local cache), ``transforms`` (the
        preprocessing it was trained with, as repr), ``num_params`` and ``acc@1`` (ImageNet-1K).
    """
    choice = _choice(name)
    if choice.model == RESNET_BASIC:
        raise ConfigError(f"{RESNET_BASIC!r} is the kit's own trunk and has no torchvision weights")
    enum = get_model_weights(choice.model)
    default = enum.DEFAULT
    return {"enum": enum.__name__, "members": [member.name for member in enum], "default": default.name,
            "call": f"torchvision.models.{choice.model}(weights={enum.__name__}.DEFAULT)", "url": default.url,
            "cached": (weights_dir() / "checkpoints" / Path(default.url).name).is_file(),
            "transforms": repr(default.transforms()), "num_params": default.meta["num_params"],
            "acc@1": default.meta["_metrics"]["ImageNet-1K"]["acc@1"]}


def tapped_nodes(detector: FCOS) -> dict[int, tuple[str, int]]:
    """``{stride: (trunk node, channels)}`` that ``detector``'s FPN reads (strides 8, 16, 32)."""
    trunk = detector.backbone
    taps = getattr(trunk, "return_nodes", None) or trunk.body.return_layers  # torchvision trunk / kit trunk
    nodes = sorted(taps, key=lambda node: int(taps[node]))
    channels = [block[0].in_channels for block in trunk.fpn.inner_blocks]
    return {stride: (node, width) for stride, node, width in zip(FEATURE_STRIDES, nodes, channels)}


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1


def backbone_table(names: list[str] | None = None, image_size: int = 320) -> list[dict]:
    """Design facts of each backbone in the teacher's detector (random weights: nothing is trained or loaded).

    Args:
        names: keys of :data:`BACKBONES` (default: all).
        image_size: side of the square input MACs are counted on.

    Returns:
        One row per backbone: ``name``, ``model``, ``description``, ``nodes`` (``{stride: [node, channels]}``),
        ``params`` and ``macs`` (whole detector core: trunk, FPN, head), ``trunk_params``, ``trunk_macs``,
        ``depthwise_convs`` (convs with ``groups == in_channels > 1``) and ``depthwise_macs_share`` (of ``macs``).
    """
    rows = []
    for name in names or list(BACKBONES):
        detector = build_detector_with_backbone(name).eval()
        core, batch = ExportableCore(detector), example_batch(image_size)
        depthwise_macs = []  # a depthwise conv does kernel-area MACs per output value
        hooks = [module.register_forward_hook(lambda m, _, out: depthwise_macs.append(
            out.numel() * m.kernel_size[0] * m.kernel_size[1])) for module in detector.modules()
            if _is_depthwise(module)]
        with torch.inference_mode():
            core(batch)
        for hook in hooks:
            hook.remove()
        macs = count_macs(core, batch)
        rows.append({"name": name, "model": BACKBONES[name].model, "description": BACKBONES[name].description,
                     "nodes": {stride: [node, width] for stride, (node, width) in tapped_nodes(detector).items()},
                     "params": count_params(detector), "trunk_params": count_params(detector.backbone.body),
                     "macs": macs, "trunk_macs": count_macs(detector.backbone.body, batch),
                     "depthwise_convs": len(hooks), "depthwise_macs_share": round(sum(depthwise_macs) / macs, 4)})
    return rows


def train_backbone(name: str, out_dir: Path | str, config: TrainConfig | None = None,
                   data_dir: Path | str | None = None, max_iters_per_epoch: int | None = None,
                   progress: bool = True, width_mult: float | None = None) -> Path:
    """Train the detector on trunk ``name`` (see :func:`backbone_spec`) from scratch and ship it.

    Like ``compresskit.engine.train_preset`` (same arguments; ``config`` defaults to :data:`TRAIN_RECIPE_BACKBONE`,
    the student's budget): writes ``out_dir/backbone_NAME.pt`` and its ``.json`` through ``ship_checkpoint``
    (``meta["width_mult"]`` tells the width), the resumable run beside them in ``backbone_NAME[_wMULT]-run``.
    Trains on the GPU when there is one (``fit`` picks the device); ``ship_checkpoint`` records which in
    ``meta["trained_on"]``.

    Returns:
        Path of the checkpoint.
    """
    config = config or TRAIN_RECIPE_BACKBONE
    checkpoint = Path(out_dir) / f"backbone_{name}.pt"
    # One run folder per width: resuming a run of another width would load tensors of the wrong shapes.
    width = "" if width_mult is None else f"_w{width_mult:g}"
    run_dir = Path(out_dir) / f"backbone_{name}{width}-run"
    seed_everything(config.seed)
    train_set, val_set = load_split("train", data_dir), load_split("val", data_dir)
    spec = backbone_spec(name, num_classes=train_set.label_map.num_classes, width_mult=width_mult)
    model = build_detector(spec)
    val_loader = make_loader(val_set, batch_size=EVAL_BATCH_SIZE, train=False)
    result = fit(model, train_set, val_loader, config, run_dir,
                 max_iters_per_epoch=max_iters_per_epoch, progress=progress)
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return checkpoint
    meta = {"backbone": name, "width_mult": width_mult, "train_config": asdict(config),
            "train_seconds": round(result["train_seconds"], 1), "history": result["history"], "seed": config.seed}
    return ship_checkpoint(checkpoint, model.cpu(), spec, train_set.label_map, meta, val_set, progress=progress)


def plot_macs_split(rows: list[dict]) -> "Figure":
    """Stacked bars of :func:`backbone_table` rows: the trunk's MACs and the FPN's and head's, per backbone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 0.45 * len(rows) + 1.2), layout="constrained")
    ax = figure.add_subplot()
    names = [row["name"] for row in rows]
    trunk = [row["trunk_macs"] / 1e9 for row in rows]
    rest = [(row["macs"] - row["trunk_macs"]) / 1e9 for row in rows]
    ax.barh(names, trunk, color="#4363d8", label="trunk")
    ax.barh(names, rest, left=trunk, color="#a9a9a9", label="FPN and FCOS head (the same design on every trunk)")
    ax.invert_yaxis()
    ax.set_xlabel("multiply-accumulates per 320x320 image (G)")
    figure.legend(fontsize=8, loc="outside upper center", ncols=2)
    ax.grid(alpha=0.3, axis="x")
    return figure
