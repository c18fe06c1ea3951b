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
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from compresskit.data.files import atomic_write_json
from compresskit.data.safe_paths import confined, link_on_the_way
from compresskit.errors import DatasetError

EXAMPLE_CATEGORIES = ({"id": 0, "name": "disc"}, {"id": 3, "name": "tile"},
                      {"id": 7, "name": "ring (no boxes yet)"})
EXAMPLE_SIZES = ((480, 320), (320, 480), (400, 400), (640, 360))
GRAYSCALE_INDEX = 5  # which image is saved in mode "L"
FRAMES_PER_BURST = 3
BURST_PATTERN = r"^(burst\d+)_"  # the --group-by pattern that keeps a burst together


def write_example_export(folder: Path | str, images: int = 12, seed: int = 0,
                         sizes: Sequence[tuple[int, int]] = EXAMPLE_SIZES) -> Path:
    """Write ``folder/annotations.json`` and ``folder/images/burstNN_frameK.jpg`` (``images`` of them).

    Images come in bursts of ``FRAMES_PER_BURST`` near-duplicate frames (the same objects, moved a few pixels),
    as a camera or a video gives them: ``data split --group-by '^(burst\\d+)_'`` keeps a burst on one side.
    Each burst holds two or three objects: discs (category id 0) and tiles (id 3); the category with id 7 has no
    boxes. Image ``GRAYSCALE_INDEX`` is grayscale.

    Args:
        folder: a new or empty folder.
        images: how many images (at least 2).
        seed: one seed gives the same files.
        sizes: the (width, height) of the images, one per burst in turn (e.g. one large landscape size, as a
            phone or DSLR export has).

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
        burst, frame = divmod(index, FRAMES_PER_BURST)
        width, height = sizes[burst % len(sizes)]
        if frame == 0:  # a new burst: new background and objects
            background = rng.integers(70, 160, size=(height, width, 3), dtype=np.uint8)
            objects = []
            for object_index in range(2 + burst % 2):
                side = int(rng.integers(max(24, min(width, height) // 10), min(width, height) // 3))
                objects.append((EXAMPLE_CATEGORIES[(burst + object_index) % 2], side,
                                int(rng.integers(8, width - side - 8)), int(rng.integers(8, height - side - 8))))
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        for category, side, x0, y0 in objects:
            x, y = x0 + int(rng.integers(-8, 9)), y0 + int(rng.integers(-8, 9))  # the frame-to-frame jitter
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
        name = f"burst{burst:02d}_frame{frame}.jpg"
        image.save(folder / "images" / name, quality=95)
        document["images"].append({"id": index + 1, "file_name": name, "width": width, "height": height})
    return atomic_write_json(folder / "annotations.json", document)


def convert_to_rgb_(images_dir: Path | str, file_names: list[str]) -> list[str]:
    """Rewrite the named images in RGB, in place (what ``data check``'s non-RGB warning suggests for tools other
    than the kit, whose loader converts on the fly). Returns the names actually converted.

    Raises:
        DatasetError: a name leaves ``images_dir``, or the file (or a folder on its way) is a symbolic link: the
            rewrite would change a file outside the dataset (a shared store), so nothing is converted.
    """
    paths = [confined(images_dir, name) for name in file_names]
    for path in paths:
        link = link_on_the_way(Path(images_dir), path)
        if link is not None:
            raise DatasetError(f"{link} is a symbolic link; converting {path.name} in place would rewrite a file "
                               "outside the dataset: copy the images into the folder first (nothing was converted)")
    converted = []
    for name, path in zip(file_names, paths):
        with Image.open(path) as image:
            if image.mode == "RGB":
                continue
            rgb = image.convert("RGB")
        partial = path.with_name(path.name + ".partial")
        rgb.save(partial, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), quality=95)
        partial.replace(path)  # a reader never sees a half-written image
        converted.append(name)
    return converted

