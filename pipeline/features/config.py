"""Stage-one settings: one block of defaults, one validation place at the boundary, and for every
setting, declared where it is defined, how it enters the cache key (`key_role`):

- KEYED: its value is in the key (it changes the numbers);
- RESOLVED: what it resolves to is in the key (the weights' SHA-256 or seed, the compute dtype);
- FINGERPRINT: it changes which images and labels are used, so it is in the key through the dataset
  fingerprint (a hash of those very pixels and labels);
- NOT_KEYED: it changes only how fast or where the work happens.
"""
from __future__ import annotations

import dataclasses
import os

from ..durable import folder_or_missing
from ..errors import PipelineError
from . import pooling as P
from . import views as V

# --- defaults: what `python -m pipeline features` does with no options -----------------
DATASET = "cifar10"          # keras.datasets name, used when --data-dir is not given
DATA_DIR = None              # offline input: CIFAR python batches or image folders (dir or .tar.gz)
SPLITS = ("train", "test")   # splits to extract, in this order
LIMIT = None                 # at most this many images per split, stratified by class
WEIGHTS = "imagenet"         # imagenet (Keras download) | random (seeded, offline) | PATH
WEIGHTS_SEED = 0             # seed of --weights random
LAYER = "fc2"                # penultimate layer of VGG19: the notebook's "all but the softmax"; or a comma
                             # list of layer[:pooling], e.g. block4_pool:avg2x2,block5_pool (pooling.py)
POOLING = "flatten"          # how a conv layer without :pooling becomes a vector: flatten|avg|max|avg2x2
VIEWS = "none"               # augmented views cached per image: none, or e.g. flip,shift4 (views.py)
SHIFT_RANGE = 0.125          # shiftN: up to this fraction of width and height (4 px of 32)
VIEWS_SEED = 0               # seed of the shifts
IMAGE_SIZE = 224             # images are upscaled to IMAGE_SIZE x IMAGE_SIZE
INTERPOLATION = "cubic"      # OpenCV interpolation for the upscale (the notebook used cubic)
PRECISION = "auto"           # compute dtype (Keras mixed-precision policy); auto = fastest native
STORE_DTYPE = "float32"      # dtype of the cached features
BATCH_SIZE = 32              # images per forward pass
CACHE_DIR = "data/features"  # where caches are written
ON_BAD_IMAGE = "fail"        # fail: stop at an unreadable image; skip: leave it out and list it
MAX_IMAGE_PIXELS = 50_000_000  # larger image files are bad images (checked before decoding; 50 MP = 150 MB decoded)
MAX_ARCHIVE_BYTES = 4 << 30    # an image-folder .tar.gz may expand to at most this much (checked before unpacking)
# ------------------------------------------------------------------------------------------

MAX_IMAGE_SIZE = 512        # --image-size upper bound: 16x CIFAR; block1 at 512 px is 64 MB per image
DATASETS = ("cifar10", "cifar100")
INTERPOLATIONS = ("cubic", "linear", "nearest", "area", "lanczos")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("float32", "float16")
KNOWN_SPLITS = ("train", "test")
KEYED, RESOLVED, FINGERPRINT, NOT_KEYED = "keyed", "resolved", "fingerprint", "not keyed"


def setting(default, key_role: str, shares_pass: bool = False):
    """A stage-one setting: its default, how it enters the cache key, and whether configurations that
    differ only in it can come out of one forward pass (shares_pass; a new setting splits passes
    unless it says so)."""
    return dataclasses.field(default=default, metadata={"key": key_role, "shares_pass": shares_pass})


@dataclasses.dataclass
class FeatureConfig:
    """Stage one's settings, each declared once below (default, key role, whether it shares a forward
    pass), with the defaults and their meaning in the block above: what to read (dataset, data_dir,
    splits, limit, on_bad_image, max_image_pixels, max_archive_bytes), the backbone (weights,
    weights_seed, layer, pooling, precision), the images (views, shift_range, views_seed, image_size,
    interpolation) and the cache (store_dtype, batch_size, cache_dir). `validate` checks them and
    returns the one spelling the key uses."""
    dataset: str = setting(DATASET, FINGERPRINT)
    data_dir: str | None = setting(DATA_DIR, FINGERPRINT)
    splits: tuple = setting(SPLITS, FINGERPRINT)
    limit: int | None = setting(LIMIT, FINGERPRINT)
    weights: str = setting(WEIGHTS, RESOLVED)           # -> the file's SHA-256, or random + seed
    weights_seed: int = setting(WEIGHTS_SEED, RESOLVED)  # -> part of the random weights' identity
    layer: str = setting(LAYER, KEYED, shares_pass=True)    # validated into one spelling, every pooling written out
    pooling: str = setting(POOLING, RESOLVED, shares_pass=True)   # -> written into `layer`
    views: str = setting(VIEWS, KEYED)                  # validated into one spelling
    shift_range: float = setting(SHIFT_RANGE, KEYED)    # (set to its default when there are no shifts)
    views_seed: int = setting(VIEWS_SEED, KEYED)        # (likewise)
    image_size: int = setting(IMAGE_SIZE, KEYED)
    interpolation: str = setting(INTERPOLATION, KEYED)
    precision: str = setting(PRECISION, RESOLVED)       # -> the dtype auto picked on this machine
    store_dtype: str = setting(STORE_DTYPE, KEYED, shares_pass=True)
    batch_size: int = setting(BATCH_SIZE, NOT_KEYED, shares_pass=True)
    cache_dir: str = setting(CACHE_DIR, NOT_KEYED, shares_pass=True)
    on_bad_image: str = setting(ON_BAD_IMAGE, FINGERPRINT)     # skipped images are left out of the data
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, FINGERPRINT)
    max_archive_bytes: int = setting(MAX_ARCHIVE_BYTES, NOT_KEYED, shares_pass=True)   # the same data or a stop

    def keyed(self) -> dict:
        """The settings whose values are in the key, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("key") == KEYED}


def _choice(name, value, choices):
    if value not in choices:
        raise PipelineError(f"--{name.replace('_', '-')}: expected one of {', '.join(choices)}, got {value!r}")


def validate(cfg: FeatureConfig) -> FeatureConfig:
    """Check every setting once (one line naming the option if wrong); return the config in one spelling:
    splits a tuple, layer and views canonical, settings that change nothing set to their defaults."""
    _choice("dataset", cfg.dataset, DATASETS)
    layers = P.parse_layers(cfg.layer, cfg.pooling)
    if not 0 < cfg.shift_range <= 0.5:
        raise PipelineError(f"--shift-range: expected a fraction of the image in (0, 0.5], got {cfg.shift_range}")
    if cfg.views_seed < 0:
        raise PipelineError(f"--views-seed: expected a seed >= 0, got {cfg.views_seed}")
    views = V.canonical(cfg.views)
    _choice("interpolation", cfg.interpolation, INTERPOLATIONS)
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("store_dtype", cfg.store_dtype, STORE_DTYPES)
    _choice("on_bad_image", cfg.on_bad_image, ("fail", "skip"))
    splits = cfg.splits.split(",") if isinstance(cfg.splits, str) else list(cfg.splits)
    splits = [s.strip() for s in splits if s.strip()]
    bad = [s for s in splits if s not in KNOWN_SPLITS]
    if not splits or bad or len(set(splits)) != len(splits):
        raise PipelineError(f"--splits: expected a comma list of distinct train,test, got {','.join(splits) or '(empty)'}")
    if cfg.limit is not None and cfg.limit < 1:
        raise PipelineError(f"--limit: expected a positive number of images per split, got {cfg.limit}")
    if cfg.batch_size < 1:
        raise PipelineError(f"--batch-size: expected a positive integer, got {cfg.batch_size}")
    if not 32 <= cfg.image_size <= MAX_IMAGE_SIZE:
        raise PipelineError(f"--image-size: expected 32..{MAX_IMAGE_SIZE} (VGG19 halves it five times; larger needs "
                            f"more memory than a batch should), got {cfg.image_size}")
    if cfg.weights_seed < 0:
        raise PipelineError(f"--weights-seed: expected a seed >= 0, got {cfg.weights_seed}")
    if cfg.max_image_pixels < 1:
        raise PipelineError(f"--max-image-pixels: expected a positive number, got {cfg.max_image_pixels}")
    if cfg.max_archive_bytes < 1:
        raise PipelineError(f"--max-archive-bytes: expected a positive number, got {cfg.max_archive_bytes}")
    folder_or_missing(cfg.cache_dir, "--cache-dir")
    if cfg.weights not in ("imagenet", "random") and not os.path.isfile(cfg.weights):
        raise PipelineError(f"--weights: expected imagenet, random or a weights file, got {cfg.weights!r} "
                            "(no such file); check the path")
    if cfg.weights == "imagenet" and P.needs_top(layers) and cfg.image_size != 224:
        raise PipelineError(f"--image-size {cfg.image_size}: ImageNet's fc1/fc2 weights need 224; "
                            "use --image-size 224 or conv layers (e.g. --layer block5_pool)")
    for name, pooling in layers:
        side = cfg.image_size // P.SIZE_LEVEL.get(name, 1)
        if pooling == "avg2x2" and side < 2:
            raise PipelineError(f"--layer {name}:avg2x2: its map is {side} x {side} at --image-size {cfg.image_size}; "
                                f"use at least {2 * P.SIZE_LEVEL[name]} px or another pooling")
    if cfg.data_dir is not None and not os.path.exists(cfg.data_dir):
        raise PipelineError(f"--data-dir {cfg.data_dir}: no such file or folder; pass the CIFAR python "
                            "folder, its .tar.gz, or an image-folder tree ROOT/{train,test}/CLASS/*.png")
    shifts = V.has_shifts(views)       # settings that change nothing are set to their defaults: no spurious new key
    return dataclasses.replace(cfg, splits=tuple(splits), layer=P.canonical(layers), pooling=POOLING, views=views,
                               shift_range=cfg.shift_range if shifts else SHIFT_RANGE,
                               views_seed=cfg.views_seed if shifts else VIEWS_SEED)
