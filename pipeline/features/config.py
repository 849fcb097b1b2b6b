"""Stage-one settings, each declared once, on its field of `FeatureConfig`: its default (the
class body below is the block of commented defaults), how it enters the cache key, its help line and
parser (the CLI's options are made from them), whether a study grid may vary it, and whether
configurations that differ only in it can share one forward pass. `validate` is the one validation
place; its errors name the setting (`FeatureConfig.layer: ...`), which the CLI turns into its flag.

How a setting enters the cache key (`key`):
- KEYED: its value is in the key (it changes the numbers);
- RESOLVED: what it resolves to is in the key (the weights' SHA-256 or seed, the compute dtype);
- FINGERPRINT: it changes which images and labels are used, so it is in the key through the dataset
  fingerprint (a hash of those very pixels and labels);
- NOT_KEYED: it changes only how fast or where the work happens.
"""
from __future__ import annotations

import dataclasses
import functools
import os

from ..durable import folder_or_missing
from ..errors import SettingError
from . import pooling
from . import views as views_spec

MAX_IMAGE_SIZE = 512        # image_size upper bound: 16x CIFAR; block1 at 512 px is 64 MB per image
MAX_SIZES = 4               # image sizes side by side in one cache (96+128+160 measured: +1 point over 128)
DATASETS = ("cifar10", "cifar100")
INTERPOLATIONS = ("cubic", "linear", "nearest", "area", "lanczos")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("float32", "float16")
KNOWN_SPLITS = ("train", "test")
KEYED, RESOLVED, FINGERPRINT, NOT_KEYED = "keyed", "resolved", "fingerprint", "not keyed"


def setting(default, key: str, help: str, *, parse=str, axis: bool = False, comma_list: bool = False,
            shares_pass: bool = False):
    """A stage-one setting, declared once: `default`; `key`, how it enters the cache key; `help`, its
    CLI help line; `parse`, how a command-line or grid value becomes one; `axis`, whether a study grid
    may vary it (`comma_list`: its value is itself a comma list, so grid values are separated by ;);
    `shares_pass`, whether configurations differing only in it come out of one forward pass (a new
    setting splits passes unless it says so)."""
    return dataclasses.field(default=default, metadata={
        "key": key, "help": help, "parse": parse, "axis": axis, "comma_list": comma_list, "shares_pass": shares_pass})


def optional_int(v):
    return None if v is None or str(v).strip().lower() in ("", "none", "all") else int(v)


optional_int.__name__ = "int"


def split_sizes(v) -> list[int]:
    """The sizes of an image_size value (128, "128" or "96+128+160"), in the order written; ValueError
    for anything else."""
    return [int(s) for s in str(v).split("+")]


def size_spec(v) -> int | str:
    """An image size, or several joined by + (`96+128+160`: the features of one backbone pass per
    size side by side); an int for one size (the key of a one-size cache is what it always was), the
    + spelling for several. ValueError for anything else (argparse and the study grid word it)."""
    sizes = split_sizes(v)
    return sizes[0] if len(sizes) == 1 else "+".join(map(str, sizes))


size_spec.__name__ = "size"


@dataclasses.dataclass
class FeatureConfig:
    """Stage one's settings: what to read, the backbone, the images, the cache. The defaults are what
    `python -m pipeline features` does with no options (the notebook's setting). Create one with
    keywords, e.g. `FeatureConfig(data_dir="cifar-10-python.tar.gz", layer="block5_pool", image_size=128)`;
    `validate` checks it and returns the one spelling the key uses."""
    # what to read
    dataset: str = setting("cifar10", FINGERPRINT, "cifar10|cifar100 through keras.datasets (used without data_dir)")
    data_dir: str | None = setting(None, FINGERPRINT, "offline input: CIFAR python batches or image folders "
                                   "ROOT/{train,test}/CLASS/*, a folder or .tar.gz (default: dataset through Keras)")
    splits: tuple = setting(("train", "test"), FINGERPRINT, "comma list of train,test, extracted in this order")
    limit: int | None = setting(None, FINGERPRINT, "at most N images per split, stratified by class (default: all)",
                                parse=optional_int, axis=True)
    on_bad_image: str = setting("fail", FINGERPRINT, "fail: stop at an unreadable image; skip: leave it out and "
                                "list it")      # skipped images are left out of the data
    max_image_pixels: int = setting(50_000_000, FINGERPRINT, "image files with more pixels are bad images, refused "
                                    "before decoding (50 MP = 150 MB decoded)", parse=int)
    max_archive_bytes: int = setting(4 << 30, NOT_KEYED, "an image-folder .tar.gz may expand to at most this many "
                                     "bytes, checked before anything is unpacked", parse=int,
                                     shares_pass=True)     # the same data or a stop
    # the backbone
    weights: str = setting("imagenet", RESOLVED, "imagenet (Keras download) | random (seeded, offline) | PATH "
                           "(-> the file's SHA-256, or random + seed)")
    weights_seed: int = setting(0, RESOLVED, "seed of weights=random", parse=int)
    layer: str = setting("fc2", KEYED, "fc2|fc1|block1_pool..block5_pool, or a comma list of layer[:pooling], all "
                         "from one forward pass, e.g. block4_pool:avg2x2,block5_pool (fc2: the notebook's 'all but "
                         "the softmax')", axis=True, comma_list=True, shares_pass=True)
    pooling: str = setting("flatten", RESOLVED, "conv layers without :pooling: flatten|avg|max|avg2x2 (-> written "
                           "into layer)", axis=True, shares_pass=True)
    precision: str = setting("auto", RESOLVED, f"compute dtype: {'|'.join(PRECISIONS)}; auto = the faster on this "
                             "machine, measured once (-> the dtype it picked)", axis=True)
    # the images
    views: str = setting("none", KEYED, "augmented views cached per image: none, or a comma list of flip and "
                         "shiftN", axis=True, comma_list=True)
    shift_range: float = setting(0.125, KEYED, "shiftN: up to this fraction of width and height (4 px of 32)",
                                 parse=float, axis=True)
    views_seed: int = setting(0, KEYED, "seed of the shifts", parse=int, axis=True)
    image_size: int | str = setting(224, KEYED, "upscale to this size; several joined by + (e.g. 96+128+160): the "
                                    "features at each size side by side, each size its own cache, reused",
                                    parse=size_spec, axis=True)
    interpolation: str = setting("cubic", KEYED, f"OpenCV interpolation of the upscale: {'|'.join(INTERPOLATIONS)} "
                                 "(the notebook used cubic)", axis=True)
    # the cache
    store_dtype: str = setting("float32", KEYED, f"dtype of the cached features: {'|'.join(STORE_DTYPES)}",
                               axis=True, shares_pass=True)
    batch_size: int = setting(32, NOT_KEYED, "images per forward pass", parse=int, shares_pass=True)
    cache_dir: str = setting("data/features", NOT_KEYED, "where caches live", shares_pass=True)

    def keyed(self) -> dict:
        """The settings whose values are in the key, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("key") == KEYED}

    @functools.cached_property
    def layers(self) -> tuple:
        """The layer spec as typed values, ((layer, pooling), ...): parsed once, by `validate`."""
        return tuple(pooling.parse_layers(self.layer, self.pooling))

    @functools.cached_property
    def image_sizes(self) -> tuple:
        """The image sizes as ints, smallest first (one for most caches): parsed once, by `validate`."""
        return tuple(sorted(split_sizes(self.image_size)))

    @functools.cached_property
    def view_names(self) -> tuple:
        """The views as names, the original first (views.parse_views): parsed once, by `validate`."""
        return tuple(views_spec.parse_views(self.views))


def axes(cls=FeatureConfig) -> dict:
    """The settings a study grid may vary: name -> field."""
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata["axis"]}


def _bad(name: str, detail: str):
    return SettingError(name, detail, owner="FeatureConfig")


def _choice(name, value, choices):
    if value not in choices:
        raise _bad(name, f"expected one of {', '.join(choices)}, got {value!r}")


def validate(cfg: FeatureConfig) -> FeatureConfig:
    """Check every setting once (SettingError naming it if wrong); return the config in one spelling:
    splits a tuple, layer and views canonical (and parsed: `.layers`, `.view_names`), settings that
    change nothing set to their defaults."""
    _choice("dataset", cfg.dataset, DATASETS)
    layers = pooling.parse_layers(cfg.layer, cfg.pooling)
    if not 0 < cfg.shift_range <= 0.5:
        raise _bad("shift_range", f"expected a fraction of the image in (0, 0.5], got {cfg.shift_range}")
    if cfg.views_seed < 0:
        raise _bad("views_seed", f"expected a seed >= 0, got {cfg.views_seed}")
    view_names = views_spec.parse_views(cfg.views)
    _choice("interpolation", cfg.interpolation, INTERPOLATIONS)
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("store_dtype", cfg.store_dtype, STORE_DTYPES)
    _choice("on_bad_image", cfg.on_bad_image, ("fail", "skip"))
    splits = cfg.splits.split(",") if isinstance(cfg.splits, str) else list(cfg.splits)
    splits = [s.strip() for s in splits if s.strip()]
    bad = [s for s in splits if s not in KNOWN_SPLITS]
    if not splits or bad or len(set(splits)) != len(splits):
        raise _bad("splits", f"expected a comma list of distinct train,test, got {','.join(splits) or '(empty)'}")
    if cfg.limit is not None and cfg.limit < 1:
        raise _bad("limit", f"expected a positive number of images per split, got {cfg.limit}")
    if cfg.batch_size < 1:
        raise _bad("batch_size", f"expected a positive integer, got {cfg.batch_size}")
    try:
        sizes = sorted(split_sizes(cfg.image_size))
    except ValueError:
        raise _bad("image_size", f"expected a size in pixels or several joined by + (96+128), got {cfg.image_size!r}") \
            from None
    if not all(32 <= s <= MAX_IMAGE_SIZE for s in sizes):
        raise _bad("image_size", f"expected 32..{MAX_IMAGE_SIZE} (VGG19 halves it five times; larger needs more "
                   f"memory than a batch should), got {cfg.image_size}")
    if len(set(sizes)) != len(sizes) or len(sizes) > MAX_SIZES:
        raise _bad("image_size", f"expected up to {MAX_SIZES} distinct sizes joined by +, got {cfg.image_size}")
    if cfg.weights_seed < 0:
        raise _bad("weights_seed", f"expected a seed >= 0, got {cfg.weights_seed}")
    if cfg.max_image_pixels < 1:
        raise _bad("max_image_pixels", f"expected a positive number, got {cfg.max_image_pixels}")
    if cfg.max_archive_bytes < 1:
        raise _bad("max_archive_bytes", f"expected a positive number, got {cfg.max_archive_bytes}")
    folder_or_missing(cfg.cache_dir, "cache_dir", "FeatureConfig")
    if cfg.weights not in ("imagenet", "random") and not os.path.isfile(cfg.weights):
        raise _bad("weights", f"expected imagenet, random or a weights file, got {cfg.weights!r} (no such file); "
                   "check the path")
    if cfg.weights == "imagenet" and pooling.needs_top(layers) and sizes != [224]:
        raise _bad("image_size", f"{cfg.image_size}: ImageNet's fc1/fc2 weights need 224; use image_size 224 or "
                   "conv layers (e.g. layer block5_pool)")
    for name, pool in layers:
        side = sizes[0] // pooling.SIZE_LEVEL.get(name, 1)
        if pool == "avg2x2" and side < 2:
            raise _bad("layer", f"{name}:avg2x2: its map is {side} x {side} at image_size {sizes[0]}; use at "
                       f"least {2 * pooling.SIZE_LEVEL[name]} px or another pooling")
    if cfg.data_dir is not None and not os.path.exists(cfg.data_dir):
        raise _bad("data_dir", f"{cfg.data_dir}: no such file or folder; pass the CIFAR python folder, its .tar.gz, "
                   "or an image-folder tree ROOT/{train,test}/CLASS/*.png")
    if cfg.data_dir is not None and not (os.path.isdir(cfg.data_dir) or os.path.isfile(cfg.data_dir)):
        raise _bad("data_dir", f"{cfg.data_dir}: not a folder or a regular file (a FIFO or device, never opened: "
                   "it would be waited on for ever); pass the CIFAR python folder, its .tar.gz, or an image-folder tree")
    shifts = any(n.startswith("shift") for n in view_names)   # settings that change nothing are set to their
    default = FeatureConfig                                     # defaults: no spurious new key
    size = sizes[0] if len(sizes) == 1 else "+".join(map(str, sizes))      # smallest first: one spelling, one key
    out = dataclasses.replace(cfg, splits=tuple(splits), layer=pooling.canonical(layers), pooling=default.pooling,
                              image_size=size,
                              views=views_spec.canonical(view_names),
                              shift_range=cfg.shift_range if shifts else default.shift_range,
                              views_seed=cfg.views_seed if shifts else default.views_seed)
    out.__dict__.update(layers=tuple(layers), view_names=tuple(view_names), image_sizes=tuple(sizes))   # the parsed values, kept
    return out
