"""`python -m pipeline predict --run RUN IMAGE...`: the end-to-end classifier.

The model is the frozen VGG19 base as the run's cache built it (same layer, weights, precision),
VGG19's preprocessing as a fixed float32 layer, then the trained head. Its input is an RGB image
upscaled with OpenCV as the cache did (`pipeline.features.preprocess.upscale`), values 0..255; for a
cache of several image sizes, one such input per size (`image_96`, `image_128`, ...), each through its
own VGG19 pass, the features side by side as the cache holds them. A run trained on a cache with views
predicts the mean over the same views of each image (test-time averaging, as its TTA figures are
measured; shifts seeded by the image's pixels), `tta=False` the original view only; the exported
model is the one-view classifier.
"""
from __future__ import annotations

import collections
import logging
import os
import re

import numpy as np
from tqdm import tqdm

from .durable import atomic_file, writing
from .errors import PipelineError, SettingError
from .features.backbone import build_backbone, first_batch
from .features.config import FeatureConfig, validate
from .features import pooling
from .features.images import IMAGE_EXTS, BadImage, decode_image
from .features.precision import COMPUTED, requested_as
from .features.preprocess import keras_preprocessing, upscale
from .features.views import render_by_content
from .heads.keras_file import head_model, input_width, read_head
from .heads.ensemble import head_files
from .heads.run_files import read_metrics, recorded_sha256
from .study_report import wilson
from .text_table import escaped

log = logging.getLogger(__name__)
BATCH_SIZE = 32   # images per forward pass
RUN_SETTINGS = {"layer": str, "image_size": int, "interpolation": str, "precision": str, "weights": str}
VIEW_SETTINGS = {"views": (str, FeatureConfig.views), "shift_range": (float, FeatureConfig.shift_range),
                 "views_seed": (int, FeatureConfig.views_seed)}     # absent from older runs: their defaults


def read_run(run: str) -> dict:
    """What predict needs from a run folder (which may come from anyone), checked as strictly as a
    cache: sizes before reading, every setting the model is built from (types, ranges, as `features`
    accepts them), the head's width against those settings' features, printable class names."""
    def wrong(what):                                  # every message about the run names it once, escaped
        return SettingError("run", f"{escaped(run)}: {what}", "predict")

    def refuse(why):
        return wrong(f"{why}; pass a folder written by train-head or sweep")
    metrics = read_metrics(run, refuse)
    settings, names, kind = metrics["provenance"].get("settings"), metrics["class_names"], metrics["head"]
    if kind not in ("softmax", "logreg", "ensemble"):
        raise refuse(f"its head is {str(kind)[:40]!r}, expected softmax, logreg or ensemble")
    files = head_files(run, metrics, refuse)
    for path in files:
        if not os.path.isfile(path):
            old = " (head.joblib is an older version's pickle: never loaded; re-run train-head)" \
                if os.path.exists(os.path.join(run, "head.joblib")) else "; re-run train-head"
            raise wrong(f"missing {os.path.basename(path)}{old}")
    if not isinstance(settings, dict) or "image_size" not in settings:
        raise wrong("its cache has no backbone settings (a synthetic cache?); predict needs a run trained on a cache "
                    "of stage one (features)")
    settings = _checked_settings(settings, refuse)
    want = sum(pooling.feature_dim(settings["layers"], size) for size in settings["image_sizes"])
    heads = [read_head(path, recorded_sha256(metrics, os.path.basename(path), refuse)) for path in files]
    for path, head in zip(files, heads):
        d, c = input_width(head), head["kernel"].shape[1]
        if c != len(names):
            raise wrong(f"{os.path.basename(path)} has {c} classes but metrics.json names {len(names)}; re-run train-head")
        if d != want:
            raise refuse(f"{os.path.basename(path)} takes {d} features but layer {settings['layer']} at "
                         f"{settings['image_size']} px gives {want}")
    return {"metrics": metrics, "heads": heads, "settings": settings, "class_names": names, "kind": kind}


def _checked_settings(settings: dict, refuse) -> dict:
    """The backbone settings of a run, typed and validated as `features` validates its options."""
    settings = {**settings, "weights_seed": settings.get("weights_seed", settings.get("seed", 0))}   # older runs: seed
    settings.update({k: settings.get(k, default) for k, (kind, default) in VIEW_SETTINGS.items()})
    kinds = {**RUN_SETTINGS, "weights_seed": int, **{k: kind for k, (kind, _) in VIEW_SETTINGS.items()}}
    for k, kind in kinds.items():
        v = settings.get(k)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = settings[k] = float(v)
        several = k == "image_size" and isinstance(v, str) and "+" in v      # sizes joined by +, checked below
        if (not isinstance(v, kind) or isinstance(v, bool)) and not several:
            raise refuse(f"setting {k} is {str(v)[:40]!r}, expected a{'n' if kind is int else ''} "
                         f"{kind.__name__}{' (or sizes joined by +)' if k == 'image_size' else ''}")
    if settings["precision"] not in COMPUTED:
        raise refuse(f"setting precision is {settings['precision'][:20]!r}, expected {', '.join(COMPUTED[:-1])} "
                     f"or {COMPUTED[-1]}")
    try:
        cfg = validate(FeatureConfig(layer=settings["layer"], pooling=settings.get("pooling", FeatureConfig.pooling),
                                     image_size=settings["image_size"], interpolation=settings["interpolation"],
                                     weights=settings["weights"], weights_seed=settings["weights_seed"],
                                     precision=requested_as(settings["precision"]), views=settings["views"],
                                     shift_range=settings["shift_range"], views_seed=settings["views_seed"]))
    except PipelineError as e:
        raise refuse(f"its settings: {str(e)[:160]}") from None
    if cfg.image_size != settings["image_size"]:
        raise refuse(f"setting image_size is {str(settings['image_size'])[:40]!r}, expected sizes joined by + "
                     f"smallest first ({cfg.image_size})")
    return {**settings, "layer": cfg.layer, "pooling": cfg.pooling, "layers": cfg.layers, "image_sizes": cfg.image_sizes,
            "views": cfg.views, "view_names": cfg.view_names}         # views in one spelling (printed)


def _features(keras, s: dict, size: int, sha256, name: str):
    """One image size's part of the model: an input of that size -> the pooled features."""
    base = build_backbone(s["layers"], size, s["weights"], s["weights_seed"], s["precision"], sha256=sha256)
    inp = keras.Input((size, size, 3), name=name)
    return inp, pooling.keras_pool(keras, base(keras_preprocessing(keras, inp)), s["layers"])


def end_to_end(run_info: dict):
    import keras
    s, kind = run_info["settings"], run_info["kind"]
    sha256 = (run_info["metrics"]["provenance"].get("weights") or {}).get("sha256")
    if len(s["image_sizes"]) == 1:
        inputs, x = _features(keras, s, s["image_sizes"][0], sha256, "image")
    else:     # a model per size (layer names repeat between them), their features side by side
        inputs, parts = [], []
        for size in s["image_sizes"]:
            branch = keras.Model(*_features(keras, s, size, sha256, f"image_{size}"), name=f"features_{size}px")
            inputs.append(keras.Input((size, size, 3), name=f"image_{size}"))
            parts.append(branch(inputs[-1]))
        x = keras.layers.Concatenate(dtype="float32", name="features")(parts)
    outs = [head_model(h, name=f"head_{i}" if len(run_info["heads"]) > 1 else "head")(x)
            for i, h in enumerate(run_info["heads"])]
    out = keras.layers.Average(name="ensemble")(outs) if len(outs) > 1 else outs[0]   # an ensemble: the mean
    sizes = "" if len(s["image_sizes"]) == 1 else "_" + "_".join(map(str, s["image_sizes"]))
    return keras.Model(inputs, out, name=re.sub(r"\W", "_", f"vgg19{sizes}_{pooling.slug(s['layers'])}_{kind}"))


def predict_images(model, run_info, paths, batch_size=32, tta=True, quiet=True):
    """Per image, batch by batch as each is done: (path, class index, probability vector), the mean over
    the run's views with tta (one forward pass per view and size), else of the original view; a progress
    bar (images/s, ETA) on standard error unless quiet."""
    s = run_info["settings"]
    names = s["view_names"] if tta else ["orig"]
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=quiet, smoothing=0.1, dynamic_ncols=True)
    try:
        for a in range(0, len(paths), batch_size):
            chunk = paths[a:a + batch_size]
            try:
                images = [decode_image(p) for p in chunk]
            except BadImage as e:
                done = f" (the {a} before its batch are classified above)" if a else ""
                raise PipelineError(f"cannot read image {escaped(e.path)}: {e.reason}; pass readable image "
                                    f"files{done}") from None
            proba = 0.0
            for v, view in enumerate(render_by_content(images, names, s["shift_range"], s["views_seed"])):
                x = [upscale(view, size, s["interpolation"]).astype(np.float32) for size in s["image_sizes"]]
                x = x[0] if len(x) == 1 else x
                out = model.predict_on_batch(x) if a or v else first_batch(
                    model, x, s["precision"], "predict", f"run it where the backend computes in {s['precision']} "
                    "(the precision of the run's cache), or use a run on a float32 cache")
                proba = proba + np.asarray(out, dtype=np.float64)
            proba = proba / len(names)
            bar.update(len(chunk))
            yield from ((p, int(pr.argmax()), pr) for p, pr in zip(chunk, proba))
    finally:
        bar.close()


def image_files(paths: list, recursive: bool = False) -> list:
    """The files to classify: each path that is a file, and for a folder its own image files (a name ending in
    one of IMAGE_EXTS, sorted; links are not followed), and with `recursive` its sub-folders' too (folder by
    folder, sorted; a link to a folder is not entered)."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = _folder_images(path, recursive)
            if not found:
                more = "" if recursive else ("; its sub-folders are not entered without --recursive"
                                             if any(e.is_dir(follow_symlinks=False) for e in os.scandir(path)) else "")
                raise PipelineError(f"folder {escaped(path)}: no image files in it ({', '.join(IMAGE_EXTS)}; links are not "
                                    f"followed){more}; pass image files or a folder of them")
            out += found
        elif os.path.isfile(path):
            out.append(path)
        else:                                 # a FIFO or device is never opened: it might never end
            what = "not a regular file" if os.path.exists(path) else "no such file"     # a dangling link: none
            raise PipelineError(f"image {escaped(path)}: {what}; pass existing image files or folders of them")
    return out


def _folder_images(folder: str, recursive: bool) -> list:
    """The image files in `folder` (sorted), then with `recursive` those of its sub-folders, depth first in
    name order (a stack, not recursion: any depth)."""
    found, todo = [], [folder]
    while todo:
        path = todo.pop()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            raise PipelineError(f"folder {escaped(path)}: cannot list it ({e.strerror}); pass image files or a readable "
                                "folder of them") from None
        found += [e.path for e in entries if e.name.lower().endswith(IMAGE_EXTS) and e.is_file(follow_symlinks=False)]
        if recursive:
            todo += reversed([e.path for e in entries if e.is_dir(follow_symlinks=False)])
    return found


def lines(run_dir: str, images: list, export: str | None = None, batch_size: int = BATCH_SIZE,
          tta: bool | None = None, quiet: bool = True, recursive: bool = False):
    """`path<TAB>class<TAB>probability` for each image (the command's output lines), batch by batch as
    they are classified, then how many of each class on the log; saves the model to `export` (.keras)
    first, whole or not at all. tta: average over the run's cached views (None: where it has more than one)."""
    if batch_size < 1:
        raise SettingError("batch_size", f"expected a positive integer, got {batch_size}", "predict")
    if export is not None:
        folder = os.path.dirname(os.path.abspath(export))
        if not export.endswith(".keras") or not os.path.isdir(folder):
            raise PipelineError(f"--export {escaped(export)}: expected a path ending in .keras in an existing folder")
    info = read_run(run_dir)
    images = image_files(images, recursive)
    views = info["settings"]["view_names"]
    tta = len(views) > 1 if tta is None else tta
    if tta and len(views) > 1:
        log.info(f"predict: the mean over the run's {len(views)} views ({info['settings']['views']}: the original "
                 "first) of each image, as its TTA figures; --no-tta for the original view only")
    model = end_to_end(info)
    if export:
        with writing(escaped(export), "--export path", "re-run the command"), atomic_file(export) as tmp:
            model.save(tmp)
        *more, last = [f"{size}x{size}" for size in info["settings"]["image_sizes"]]
        sizes = f"s {', '.join(more)} and {last} RGB 0..255 (the same image at each size)" if more else \
            f" {last} RGB 0..255"
        log.info(f"exported {escaped(export)}: input{sizes} upscaled with OpenCV {info['settings']['interpolation']}"
                 + ("; one view (average its outputs over views for TTA)" if len(views) > 1 else ""))
    names, counts, labelled = info["class_names"], collections.Counter(), []
    for path, k, proba in predict_images(model, info, images, batch_size, tta, quiet):
        counts[names[k]] += 1
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if folder in names:                   # ROOT/test/CLASS/*: the folder's name is the image's label
            labelled.append(folder == names[k])
        yield f"{escaped(path)}\t{names[k]}\t{proba[k]:.4f}"      # a name's TAB or newline cannot forge a line
    n = sum(counts.values())
    log.info(f"predict: {n:,} image{'' if n == 1 else 's'}: " + ", ".join(f"{name} {c:,}" for name, c in counts.most_common()))
    if labelled:
        acc, (lo, hi) = np.mean(labelled), wilson(float(np.mean(labelled)), len(labelled))
        log.info(f"predict: accuracy {acc:.2%} (95% {lo:.2%}..{hi:.2%}) on the {len(labelled):,} images in a folder "
                 f"named after a class of the run, that class taken as their label ({sum(labelled):,} right)")

