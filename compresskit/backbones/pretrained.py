"""What the article's ``mobilenet_v2(pretrained=True)`` does on current torchvision, and what the ``weights=`` API
that replaced it offers, both without downloading anything. Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import torch
import torchvision
from torchvision.models import get_model_weights

from compresskit.backbones.designs import backbone_choice
from compresskit.errors import ConfigError
from compresskit.models import RESNET_BASIC
from compresskit.models.presets import weights_dir


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
    choice = backbone_choice(name)
    if choice.model == RESNET_BASIC:
        raise ConfigError(f"{RESNET_BASIC!r} is the kit's own trunk and has no torchvision weights")
    enum = get_model_weights(choice.model)
    default = enum.DEFAULT
    return {"enum": enum.__name__, "members": [member.name for member in enum], "default": default.name,
            "call": f"torchvision.models.{choice.model}(weights={enum.__name__}.DEFAULT)", "url": default.url,
            "cached": (weights_dir() / "checkpoints" / Path(default.url).name).is_file(),
            "transforms": repr(default.transforms()), "num_params": default.meta["num_params"],
            "acc@1": default.meta["_metrics"]["ImageNet-1K"]["acc@1"]}
