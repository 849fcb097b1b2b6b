"""Stage-one settings: one block of defaults, one validation place at the boundary.

Every field of `FeatureConfig` is either in the cache key (it changes the numbers) or
listed in `NOT_IN_KEY` (it only changes how fast or where the work happens).
"""
from __future__ import annotations

import dataclasses
import os

# --- defaults: what `python -m pipeline features` does with no options -----------------
DATASET = "cifar10"          # keras.datasets name, used when --data-dir is not given
DATA_DIR = None              # offline input: CIFAR python batches or image folders (dir or .tar.gz)
SPLITS = ("train", "test")   # splits to extract, in this order
LIMIT = None                 # at most this many images per split, stratified by class
WEIGHTS = "imagenet"         # imagenet (Keras download) | random (seeded, offline) | PATH
SEED = 0                     # seed of --weights random
LAYER = "fc2"                # penultimate layer of VGG19: the notebook's "all but the softmax"
IMAGE_SIZE = 224             # images are upscaled to IMAGE_SIZE x IMAGE_SIZE
INTERPOLATION = "cubic"      # OpenCV interpolation for the upscale (the notebook used cubic)
PRECISION = "auto"           # compute dtype (Keras mixed-precision policy); auto = fastest native
STORE_DTYPE = "float32"      # dtype of the cached features
BATCH_SIZE = 32              # images per forward pass
CACHE_DIR = "data/features"  # where caches are written
ON_BAD_IMAGE = "fail"        # fail: stop at an unreadable image; skip: leave it out and list it
MAX_IMAGE_PIXELS = 50_000_000  # larger image files are bad images (checked before decoding; 50 MP = 150 MB decoded)
# ------------------------------------------------------------------------------------------

MAX_IMAGE_SIZE = 512        # --image-size upper bound: 16x CIFAR; block1 at 512 px is 64 MB per image
DATASETS = ("cifar10", "cifar100")
LAYERS = ("fc2", "fc1", "block5_pool")
INTERPOLATIONS = ("cubic", "linear", "nearest", "area", "lanczos")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("float32", "float16")
KNOWN_SPLITS = ("train", "test")
NOT_IN_KEY = ("batch_size", "cache_dir", "data_dir", "on_bad_image", "limit", "splits")
# limit, splits, data_dir and on_bad_image enter the key through the dataset fingerprint.


class PipelineError(Exception):
    """A problem the user can fix: printed as one line, exit status 1, no traceback."""


def reason(e: BaseException, limit: int = 100) -> str:
    """The informative tail of an exception's message, on one line (e.g. '[Errno -2] Name or service not known')."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.rsplit(" -- ", 1)[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass
class FeatureConfig:
    dataset: str = DATASET
    data_dir: str | None = DATA_DIR
    splits: tuple = SPLITS
    limit: int | None = LIMIT
    weights: str = WEIGHTS
    seed: int = SEED
    layer: str = LAYER
    image_size: int = IMAGE_SIZE
    interpolation: str = INTERPOLATION
    precision: str = PRECISION
    store_dtype: str = STORE_DTYPE
    batch_size: int = BATCH_SIZE
    cache_dir: str = CACHE_DIR
    on_bad_image: str = ON_BAD_IMAGE
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _choice(name, value, choices):
    if value not in choices:
        raise PipelineError(f"--{name.replace('_', '-')}: expected one of {', '.join(choices)}, got {value!r}")


def validate(cfg: FeatureConfig) -> FeatureConfig:
    """Check every setting once; return the config with splits normalised to a tuple."""
    _choice("dataset", cfg.dataset, DATASETS)
    _choice("layer", cfg.layer, LAYERS)
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
    if cfg.seed < 0:
        raise PipelineError(f"--weights-seed: expected a seed >= 0, got {cfg.seed}")
    if cfg.max_image_pixels < 1:
        raise PipelineError(f"--max-image-pixels: expected a positive number, got {cfg.max_image_pixels}")
    if os.path.exists(cfg.cache_dir) and not os.path.isdir(cfg.cache_dir):
        raise PipelineError(f"--cache-dir {cfg.cache_dir}: is a file, not a folder; pass a folder (created if missing)")
    if cfg.weights not in ("imagenet", "random") and not os.path.isfile(cfg.weights):
        raise PipelineError(f"--weights: expected imagenet, random or a weights file, got {cfg.weights!r} "
                            "(no such file); check the path")
    if cfg.weights == "imagenet" and cfg.layer != "block5_pool" and cfg.image_size != 224:
        raise PipelineError(f"--image-size {cfg.image_size}: ImageNet's fc1/fc2 weights need 224; "
                            "use --image-size 224 or --layer block5_pool")
    if cfg.data_dir is not None and not os.path.exists(cfg.data_dir):
        raise PipelineError(f"--data-dir {cfg.data_dir}: no such file or folder; pass the CIFAR python "
                            "folder, its .tar.gz, or an image-folder tree ROOT/{train,test}/CLASS/*.png")
    return dataclasses.replace(cfg, splits=tuple(splits))
