"""A small labelling-tool export, written from a seed, with the quirks real exports have.

Lesson 07 and the tests use it when no dataset of your own is at hand: one ``annotations.json`` and an
``images/`` folder, as labelling tools write them, with category id 0, gapped ids (0, 3, 7), a placeholder
category that has no boxes yet, images of several sizes in landscape and portrait, and one grayscale frame (which
``data check`` reports). The objects are flat-coloured discs and squares on a noisy background: different enough
that a detector fine-tuned for a minute learns them, so the lesson's numbers mean something.
Introduced in ``07_your_own_dataset.ipynb``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from compresskit.data.files import atomic_write_json
from compresskit.errors import DatasetError

EXAMPLE_CATEGORIES = ({"id": 0, "name": "disc"}, {"id": 3, "name": "tile"},
                      {"id": 7, "name": "ring (no boxes yet)"})
EXAMPLE_SIZES = ((480, 320), (320, 480), (400, 400), (640, 360))
GRAYSCALE_INDEX = 5  # which image is saved in mode "L"


def write_example_export(folder: Path | str, images: int = 12, seed: int = 0) -> Path:
    """Write ``folder/annotations.json`` and ``folder/images/shot_NNN.jpg`` (``images`` of them).

    Each image holds two or three objects: discs (category id 0) and tiles (id 3); the category with id 7 has no
    boxes. Image ``GRAYSCALE_INDEX`` is grayscale.

    Args:
        folder: a new or empty folder.
        images: how many images (at least 2).
        seed: one seed gives the same files.

    Returns:
        The annotation file's path.
    """
    folder = Path(folder)
    if images < 2:
        raise DatasetError(f"an example export needs at least 2 images, got {images}")
    if folder.exists() and any(folder.iterdir()):
        raise DatasetError(f"{folder} is not empty; write the example export into a new folder")
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    document = {"images": [], "annotations": [], "categories": [dict(c) for c in EXAMPLE_CATEGORIES]}
    for index in range(images):
        width, height = EXAMPLE_SIZES[index % len(EXAMPLE_SIZES)]
        image = Image.fromarray(rng.integers(70, 160, size=(height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for box_index in range(2 + index % 2):
            category = EXAMPLE_CATEGORIES[(index + box_index) % 2]
            side = int(rng.integers(max(24, min(width, height) // 10), min(width, height) // 3))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            shape = [x, y, x + side - 1, y + side - 1]
            if category["id"] == 0:
                draw.ellipse(shape, fill=(220, 60, 40))
            else:
                draw.rectangle(shape, fill=(40, 70, 210))
            document["annotations"].append({"id": len(document["annotations"]) + 1, "image_id": index + 1,
                                            "category_id": category["id"], "bbox": [x, y, side, side],
                                            "area": side * side, "iscrowd": 0})
        if index == GRAYSCALE_INDEX:
            image = image.convert("L")  # exports mix in the odd grayscale frame
        name = f"shot_{index:03d}.jpg"
        image.save(folder / "images" / name, quality=95)
        document["images"].append({"id": index + 1, "file_name": name, "width": width, "height": height})
    return atomic_write_json(folder / "annotations.json", document)


def convert_to_rgb_(images_dir: Path | str, file_names: list[str]) -> list[str]:
    """Rewrite the named images in RGB, in place (what ``data check``'s non-RGB warning suggests for tools other
    than the kit, whose loader converts on the fly). Returns the names actually converted."""
    converted = []
    for name in file_names:
        path = Path(images_dir) / name
        with Image.open(path) as image:
            if image.mode == "RGB":
                continue
            rgb = image.convert("RGB")
        partial = path.with_name(path.name + ".partial")
        rgb.save(partial, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), quality=95)
        partial.replace(path)  # a reader never sees a half-written image
        converted.append(name)
    return converted

