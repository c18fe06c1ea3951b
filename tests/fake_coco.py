"""A small COCO-2017-shaped source built from nothing, for tests that need "real COCO" files without the real ones.

``make_fake_coco`` writes what an official COCO 2017 install holds, in the same layout and with the same JSON
fields: ``annotations/instances_{train,val}2017.json`` (info, licenses, images with ``coco_url``/``flickr_url``,
annotations with polygon segmentations, one crowd region with an RLE segmentation, categories with COCO's real
gapped ids, names and supercategories) and JPEG drawings in ``train2017/`` and ``val2017/``. Everything follows
from the seed, so two builds with the same arguments are byte-identical.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw

# A handful of COCO's 80 categories with their real ids (gapped: 1..90 with holes) and supercategories.
CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "kitchen", "id": 44, "name": "bottle"},
    {"supercategory": "kitchen", "id": 51, "name": "bowl"},
    {"supercategory": "furniture", "id": 62, "name": "chair"},
    {"supercategory": "appliance", "id": 81, "name": "sink"},
    {"supercategory": "indoor", "id": 90, "name": "toothbrush"},
]
# COCO's eight image licenses, as listed in the official annotation files.
LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3,
     "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6, "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]
# Landscape, portrait and square sizes as COCO has them (longest side at most 640); neighbours differ in
# orientation, so any two consecutive images of a split include two orientations.
IMAGE_SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (375, 500), (640, 360), (612, 612),
               (640, 512), (333, 500)]
# Person is by far COCO's most frequent class; the weights keep that shape so category counts are uneven.
CATEGORY_WEIGHTS = [6, 2, 1, 3, 2, 2, 1, 1]
COCO_MAX_IMAGE_ID = 581929  # the largest train2017 image id


def make_fake_coco(root: Path, images: int = 16, seed: int = 0) -> Path:
    """Write a COCO-2017-shaped source with ``images`` train2017 images and a quarter as many val2017 images.

    Args:
        root: folder to write into (created); gets ``annotations/``, ``train2017/`` and ``val2017/``.
        images: number of train2017 images (at least 1).
        seed: everything (sizes, objects, pixels, ids) follows from it.

    Returns:
        ``root``.
    """
    if images < 1:
        raise ValueError(f"make_fake_coco needs at least 1 image, got {images}")
    root = Path(root)
    rng = random.Random(seed)
    val_images = max(2, images // 4)
    image_ids = rng.sample(range(1, COCO_MAX_IMAGE_ID + 1), images + val_images)
    annotation_ids = itertools.count(rng.randrange(100_000, 900_000))  # unique across both splits, as in COCO
    for split, ids in (("train2017", image_ids[:images]), ("val2017", image_ids[images:])):
        document = _split_document(root, split=split, image_ids=ids, rng=rng, annotation_ids=annotation_ids)
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document), encoding="utf-8")  # one line, as the official files are
    return root


def _split_document(root: Path, *, split: str, image_ids: list[int], rng: random.Random,
                    annotation_ids: Iterator[int]) -> dict:
    """Draw every image of one split and return its COCO document."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    first_size = rng.randrange(len(IMAGE_SIZES))
    for index, image_id in enumerate(image_ids):
        width, height = IMAGE_SIZES[(first_size + index) % len(IMAGE_SIZES)]
        file_name = f"{image_id:012d}.jpg"
        images.append({
            "license": rng.randint(1, len(LICENSES)), "file_name": file_name,
            "coco_url": f"http://images.cocodataset.org/{split}/{file_name}", "height": height, "width": width,
            "date_captured": f"2013-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                             f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            "flickr_url": f"http://farm{rng.randint(1, 9)}.staticflickr.com/{rng.randint(1000, 9999)}/"
                          f"{rng.randint(10**9, 10**10 - 1)}_{rng.getrandbits(40):010x}_z.jpg",
            "id": image_id})
        canvas = Image.new("RGB", (width, height), color=_colour(rng, low=90, high=230))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.randint(2, 5)):  # background clutter that is not annotated
            x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
            draw.rectangle([x0, y0, x0 + rng.uniform(20, width / 3), y0 + rng.uniform(20, height / 3)],
                           fill=_colour(rng, low=60, high=200))
        # The first image of each split holds the crowd region, as COCO's crowd annotations sit among others.
        if index == 0:
            annotations.append(_crowd_region(draw, rng, image_id=image_id, width=width, height=height,
                                             annotation_id=next(annotation_ids)))
        for _ in range(rng.randint(2, 6)):
            # Cycle through every category once before drawing at random, so each one is used.
            drawn = sum(1 for annotation in annotations if not annotation["iscrowd"])
            category = (CATEGORIES[drawn] if drawn < len(CATEGORIES)
                        else rng.choices(CATEGORIES, weights=CATEGORY_WEIGHTS)[0])
            annotations.append(_polygon_object(draw, rng, image_id=image_id, width=width, height=height,
                                               category_id=category["id"], annotation_id=next(annotation_ids)))
        canvas.save(folder / file_name, format="JPEG", quality=85)
    info = {"description": "COCO-2017-shaped test data (synthetic drawings)", "url": "http://cocodataset.org",
            "version": "1.0", "year": 2017, "contributor": "compresskit tests", "date_created": "2017/09/01"}
    return {"info": info, "licenses": LICENSES, "images": images, "annotations": annotations,
            "categories": CATEGORIES}


def _colour(rng: random.Random, *, low: int, high: int) -> tuple[int, int, int]:
    return tuple(rng.randint(low, high) for _ in range(3))


def _polygon_object(draw: ImageDraw.ImageDraw, rng: random.Random, *, image_id: int, width: int, height: int,
                    category_id: int, annotation_id: int) -> dict:
    """Draw one filled polygon and return its annotation (polygon segmentation, shoelace area, tight bbox)."""
    # Radii from a few pixels to a third of the image: COCO's small (<32²), medium and large areas all occur.
    radius = rng.choice([rng.uniform(6, 14), rng.uniform(20, 45), rng.uniform(60, min(width, height) / 3)])
    centre_x = rng.uniform(radius, width - radius)
    centre_y = rng.uniform(radius, height - radius)
    corners = rng.randint(5, 9)
    points = []
    for corner in range(corners):
        angle = 2 * math.pi * (corner + rng.uniform(-0.3, 0.3)) / corners
        reach = radius * rng.uniform(0.6, 1.0)
        x = min(max(centre_x + reach * math.cos(angle), 0.0), width - 1.0)
        y = min(max(centre_y + reach * math.sin(angle), 0.0), height - 1.0)
        points.append((round(x, 2), round(y, 2)))
    draw.polygon(points, fill=_colour(rng, low=0, high=255), outline=(0, 0, 0))
    xs, ys = [x for x, _ in points], [y for _, y in points]
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(corners)))
    return {"segmentation": [[coordinate for point in points for coordinate in point]], "area": round(area, 4),
            "iscrowd": 0, "image_id": image_id,
            "bbox": [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)],
            "category_id": category_id, "id": annotation_id}


def _crowd_region(draw: ImageDraw.ImageDraw, rng: random.Random, *, image_id: int, width: int, height: int,
                  annotation_id: int) -> dict:
    """Draw a dense group of small figures and return one crowd annotation over it (uncompressed RLE mask)."""
    x0, y0 = rng.randrange(0, width // 2), rng.randrange(0, height // 2)
    x1, y1 = x0 + rng.randrange(40, width // 2), y0 + rng.randrange(30, height // 2)
    for _ in range(12):
        cx, cy = rng.uniform(x0 + 4, x1 - 4), rng.uniform(y0 + 4, y1 - 4)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=_colour(rng, low=0, high=120))
    # COCO's RLE runs down columns (Fortran order), starting with a run of zeros.
    counts, zeros = [], x0 * height + y0
    for _ in range(x0, x1):
        counts += [zeros, y1 - y0]
        zeros = height - y1 + y0
    counts.append(zeros - y0 + (width - x1) * height)
    return {"segmentation": {"counts": counts, "size": [height, width]}, "area": (x1 - x0) * (y1 - y0),
            "iscrowd": 1, "image_id": image_id, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "category_id": CATEGORIES[0]["id"], "id": annotation_id}

