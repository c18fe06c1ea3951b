"""The embedded dataset: a COCO-format detection set the kit draws itself, deterministically from a seed.

It is built to make a detector work for its mAP: six shape classes in three look-alike pairs (disk/ring,
square/frame, triangle/chevron), random colours (colour carries no class information), textured and cluttered
backgrounds with distractor strokes, objects from COCO's *small* to *large* areas, and occlusion — a box covers
only the visible part of an object, and objects hidden by more than half are dropped, as a COCO annotator would.

Category ids are deliberately gapped (like COCO's 1..90 with holes) so the label <-> category-id mapping is
exercised on every run. Introduced in ``00_setup_and_data.ipynb``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from compresskit.data.files import atomic_write_json

GENERATOR_VERSION = 1

# Gapped ids on purpose (see module docstring); pairs of look-alikes sit next to each other.
CATEGORIES = [
    {"id": 2, "name": "disk", "supercategory": "round"},
    {"id": 5, "name": "ring", "supercategory": "round"},
    {"id": 11, "name": "square", "supercategory": "boxy"},
    {"id": 12, "name": "frame", "supercategory": "boxy"},
    {"id": 27, "name": "triangle", "supercategory": "pointed"},
    {"id": 40, "name": "chevron", "supercategory": "pointed"},
]


@dataclass
class EmbeddedConfig:
    """What the generator draws. Every field is recorded beside the data, so a cache hit is exact."""

    seed: int = 0
    train_images: int = 2000
    val_images: int = 300
    image_size: int = 320
    min_objects: int = 2
    max_objects: int = 9
    min_side: float = 16.0  # px; below ~16 px a shape's class is not recognisable even to a person
    max_side: float = 170.0
    min_visible_fraction: float = 0.5
    jpeg_quality: int = 90


def _split_seed(config: EmbeddedConfig, split: str, index: int) -> np.random.Generator:
    # One independent stream per image, so the order workers finish in cannot change any pixel.
    split_key = {"train": 1, "val": 2}[split]
    return np.random.default_rng([config.seed, split_key, index])


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Low-frequency colour field + fine grain + stripes/cells + distractor strokes."""
    coarse = rng.uniform(40, 215, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 28)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    field += (stripes * rng.uniform(0, 22))[..., None]
    field += rng.normal(0, rng.uniform(3, 12), size=field.shape)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 14)):  # clutter: strokes and arcs that resemble object edges
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = rng.uniform(-20, size + 20, size=2)
        if rng.random() < 0.5:
            x1, y1 = x0 + rng.normal(0, 60), y0 + rng.normal(0, 60)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(6, 50)
            start = rng.uniform(0, 360)
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + rng.uniform(40, 200), fill=colour,
                     width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, 4)):  # irregular blobs: object-sized, but no class
        cx, cy = rng.uniform(0, size, size=2)
        r = rng.uniform(5, 30)
        pts = [(cx + r * rng.uniform(0.4, 1.2) * math.cos(a), cy + r * rng.uniform(0.4, 1.2) * math.sin(a))
               for a in np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(5, 9))))]
        draw.polygon(pts, fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
    return image


def _shape_mask(name: str, cx: float, cy: float, w: float, h: float, angle: float, size: int) -> Image.Image:
    """A binary mask of one shape; ``angle`` (radians) is a small tilt that keeps each class recognisable."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cos, sin = math.cos(angle), math.sin(angle)

    def poly(points):  # points in units of the half-width/half-height, rotated about the centre
        return [(cx + (px * w / 2) * cos - (py * h / 2) * sin, cy + (px * w / 2) * sin + (py * h / 2) * cos)
                for px, py in points]

    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if name == "disk":
        draw.ellipse(box, fill=255)
    elif name == "ring":
        draw.ellipse(box, fill=255)
        t = 0.5
        draw.ellipse([cx - w * t / 2, cy - h * t / 2, cx + w * t / 2, cy + h * t / 2], fill=0)
    elif name == "square":
        draw.polygon(poly([(-1, -1), (1, -1), (1, 1), (-1, 1)]), fill=255)
    elif name == "frame":
        draw.polygon(poly([(-1, -1), (1, -1), (1, 1), (-1, 1)]), fill=255)
        draw.polygon(poly([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]), fill=0)
    elif name == "triangle":
        draw.polygon(poly([(0, -1), (1, 1), (-1, 1)]), fill=255)
    elif name == "chevron":  # a triangle with a notch cut from its base: the look-alike of "triangle"
        draw.polygon(poly([(0, -1), (1, 1), (0, 0.2), (-1, 1)]), fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return mask


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray, mask: np.ndarray) -> tuple:
    # Pick a colour whose luminance differs from what lies beneath the object, or the object can vanish.
    beneath = background[mask].mean(axis=0) if mask.any() else np.array([128.0, 128.0, 128.0])
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if abs(float(colour @ [0.299, 0.587, 0.114]) - float(beneath @ [0.299, 0.587, 0.114])) > 45:
            break
    return tuple(int(c) for c in colour)


def render_image(config: EmbeddedConfig, split: str, index: int) -> tuple[Image.Image, list[dict]]:
    """Draw one image and its annotations (category ids, xywh boxes of the visible part, visible areas)."""
    rng = _split_seed(config, split, index)
    size = config.image_size
    image = _background(rng, size)
    pixels = np.asarray(image).copy()
    objects = []  # (category, visible mask), in drawing order; later objects occlude earlier ones
    for _ in range(rng.integers(config.min_objects, config.max_objects + 1)):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        side = math.exp(rng.uniform(math.log(config.min_side), math.log(config.max_side)))
        aspect = math.exp(rng.uniform(-0.35, 0.35))
        w, h = side * aspect, side / aspect
        cx = rng.uniform(w / 2 - 0.15 * w, size - w / 2 + 0.15 * w)  # may poke slightly out of the frame
        cy = rng.uniform(h / 2 - 0.15 * h, size - h / 2 + 0.15 * h)
        angle = rng.uniform(-0.25, 0.25)
        colour_rng = rng.integers(2**31)  # drawn even for rejected shapes, so streams stay aligned
        mask = np.asarray(_shape_mask(category["name"], cx, cy, w, h, angle, size)) > 0
        if mask.sum() < 20:
            continue
        # Occlusion, but never so much that an object drawn earlier becomes unrecognisable: then every
        # object in the picture is also in the annotations (no unlabelled half-hidden shapes).
        if any((visible & ~mask).sum() < config.min_visible_fraction * visible.sum() for _, visible in objects):
            continue
        objects = [(cat, visible & ~mask) for cat, visible in objects]
        local = np.random.default_rng(colour_rng)
        colour = _contrasting_colour(local, pixels, mask)
        shade = local.uniform(0.75, 1.0, size=(1, 3))  # a little shading so fills are not flat
        pixels[mask] = np.clip(np.asarray(colour) * shade + local.normal(0, 6, size=(int(mask.sum()), 3)), 0, 255)
        objects.append((category, mask))
    annotations = []
    for category, visible in objects:
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        annotations.append({"category_id": category["id"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": int(visible.sum()), "iscrowd": 0})
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, annotations


def _render_job(job: tuple) -> tuple[int, list[dict]]:
    config, split, index, path = job
    image, annotations = render_image(config, split, index)
    tmp = Path(str(path) + ".part")
    image.save(tmp, format="JPEG", quality=config.jpeg_quality)
    os.replace(tmp, path)
    return index, annotations


def _coco_document(config: EmbeddedConfig, split: str, per_image: list[list[dict]]) -> dict:
    images, annotations = [], []
    for index, objects in enumerate(per_image):
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{split}/{image_id:06d}.jpg",
                       "width": config.image_size, "height": config.image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    return {"info": {"description": "compresskit embedded dataset", "version": GENERATOR_VERSION,
                     "config": asdict(config)},
            "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}


def generate_embedded(out: Path | str, config: EmbeddedConfig | None = None, workers: int | None = None,
                      progress: bool = True) -> Path:
    """Write the embedded dataset to ``out`` in COCO layout, or reuse it if the same config is already there.

    Layout: ``annotations/instances_{train,val}.json`` and JPEGs in ``train/`` and ``val/`` (``file_name`` is
    relative to ``out``). The annotation files are written last and atomically, so a folder with both of them is
    complete. Returns ``out``.
    """
    config = config or EmbeddedConfig()
    out = Path(out)
    stamp = out / "annotations" / "generator.json"
    wanted = {"version": GENERATOR_VERSION, "config": asdict(config)}
    splits = {"train": config.train_images, "val": config.val_images}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and all(
            (out / "annotations" / f"instances_{s}.json").exists() for s in splits):
        return out
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # the folder is incomplete until the stamp is back
    jobs = [(config, split, i, out / split / f"{i + 1:06d}.jpg") for split, n in splits.items() for i in range(n)]
    workers = workers or min(os.cpu_count() or 1, 8)
    results: dict[str, list] = {split: [None] * n for split, n in splits.items()}
    bar = tqdm(total=len(jobs), desc="embedded dataset", unit="img", disable=not progress)
    with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
        for job, (index, annotations) in zip(jobs, pool.imap(_render_job, jobs, chunksize=16)):
            results[job[1]][index] = annotations
            bar.update()
    bar.close()
    for split in splits:
        atomic_write_json(out / "annotations" / f"instances_{split}.json",
                          _coco_document(config, split, results[split]))
    atomic_write_json(stamp, wanted)
    return out


def embedded_dataset_dir(seed: int = 0) -> Path:
    """The cached embedded dataset for ``seed`` (generated on first use)."""
    from compresskit.settings import data_root

    return generate_embedded(data_root() / f"embedded-seed{seed}", EmbeddedConfig(seed=seed))
