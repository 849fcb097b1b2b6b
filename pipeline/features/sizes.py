"""Several image sizes side by side (`image_size=96+128+160`): each size is a cache of its own, found
or built like any one-size cache (so a study over 96, 128 and 96+128 runs each size's backbone
once), and the several-size cache is their features concatenated, size after size (smallest
first), row by row, into a file of the same layout: its key holds every size, its provenance names
the caches it was combined from. Measured at full scale (docs/full-cifar10.md): 96+128+160 px +1 point over 128 px.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os

import numpy as np
from tqdm import tqdm

from ..errors import PipelineError
from ..hashing import json_sha256
from ..text_table import file_size
from .build import check_space, finished_or_set_aside
from .cache import load_cache, write_cache, writer_lock
from .config import FeatureConfig
from .plan import Plan, versions

log = logging.getLogger(__name__)
BLOCK_BYTES = 64 << 20      # rows combined at a time: memory stays bounded whatever the cache's size
ROOT_ONLY = ("checksum", "complete")   # attributes a file computes for itself


def size_parts(cfg: FeatureConfig) -> list[FeatureConfig]:
    """The one-size configurations of a validated several-size one, every other setting the same."""
    return [dataclasses.replace(cfg, image_size=s) for s in cfg.image_sizes]


def _check_parts(p: Plan, paths: list, metas: list, parts: list):
    """PipelineError unless the parts are this plan's sizes of the same images, weights and dtype."""
    for size, path, meta, part in zip(p.cfg.image_sizes, paths, metas, parts):   # the weights by their identity:
        same = (meta.get("dataset_fingerprint") == p.fingerprint and meta.get("weights") == p.weights  # random fc1/fc2
                and meta.get("settings", {}).get("image_size") == size       # are drawn in each size's own shapes
                and meta.get("settings", {}).get("precision") == p.precision and set(part) == set(parts[0]))
        if not same:
            raise PipelineError(f"cache {path}: not the {size} px features of the same data, weights and precision "
                                f"as {p.path} needs; move it away and re-run")
        for s, (_, labels, m) in part.items():
            _, labels0, m0 = parts[0][s]
            if not (np.array_equal(labels, labels0) and np.array_equal(m["ids"], m0["ids"])):
                raise PipelineError(f"cache {path}: its '{s}' images are not those of {paths[0]}; move it away and "
                                    "re-run")


def combine(p: Plan, paths: list, quiet: bool = False) -> str:
    """Write the several-size cache of `p` from its one-size caches `paths` (checked in full, in the
    order of p.cfg.image_sizes): their features side by side, block of rows by block of rows."""
    with writer_lock(p.stem):
        if finished_or_set_aside(p.path, p.key, full=False):
            return p.path                              # another process combined them while we waited
        parts = [load_cache(path, populate=False) for path in paths]     # verified (once a version), mapped
        metas = [{k: v for k, v in next(iter(part.values()))[2].items() if k not in ("split", "ids")}
                 for part in parts]                                      # each file's attributes, as loaded
        _check_parts(p, paths, metas, parts)
        splits = {s: (labels, m["ids"], 0) for s, (_, labels, m) in parts[0].items()}
        check_space(p.cfg.cache_dir, sum(x.nbytes for part in parts for x, _, _ in part.values()), "combining the sizes",
                    "the finished file, as large as its parts together")
        bar = tqdm(total=sum(len(v[0]) for v in splits.values()), desc="combining sizes", unit="img", disable=quiet,
                   dynamic_ncols=True)

        def chunks(split):
            arrays = [part[split][0] for part in parts]
            row = sum(a[:1].nbytes for a in arrays)
            step = max(1, BLOCK_BYTES // max(1, row))
            for a in range(0, len(arrays[0]), step):
                b = min(a + step, len(arrays[0]))
                yield a, b, np.concatenate([x[a:b] for x in arrays], axis=-1)
                bar.update(b - a)
        first, shas = metas[0], [m.get("weights_sha256") for m in metas]
        meta = {**{k: v for k, v in first.items() if k not in ROOT_ONLY}, "key": p.key, "key_payload": p.key_payload,
                "weights_sha256": shas[0] if len(set(shas)) == 1 else json_sha256(shas),    # one, or of them all
                "settings": {**first["settings"], "image_size": p.cfg.image_size, "precision_requested": p.cfg.precision},
                "source": p.cfg.data_dir or "keras.datasets", "versions": versions(), "batch_size": p.cfg.batch_size,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "combined_from": [{"image_size": size, "key": m["key"], "file": os.path.basename(path),
                                   "weights_sha256": m.get("weights_sha256"), "extraction": m.get("extraction", {})}
                                  for size, path, m in zip(p.cfg.image_sizes, paths, metas)]}
        costs, n = [m.get("extraction") or {} for m in metas], sum(len(v[0]) for v in splits.values())
        meta["extraction"] = {"images": n, "seconds": round(sum(c["seconds"] for c in costs), 2),       # every size's
                              "model_s": round(sum(c.get("model_s", 0.0) for c in costs), 2)} \
            if all(c.get("images") == n and c.get("seconds") for c in costs) else {}    # (parts resumed: not told)
        try:
            write_cache(p.path, meta, splits, chunks)
        finally:
            bar.close()
    log.info(f"features: {' + '.join(map(str, p.cfg.image_sizes))} px side by side -> {p.path} "
             f"({file_size(os.path.getsize(p.path))})")
    return p.path
