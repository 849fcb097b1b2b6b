"""Stage one's entry point: `extract(cfg, shards, engine)` gives the finished cache for `cfg` (a hit,
resumed, built here, or built in shards here or on Ray); `find_cache(cfg)` the one already built."""
from __future__ import annotations

import dataclasses
import json
import logging

from ..errors import PipelineError, SettingError
from .build import BuiltBackbone, build_caches, is_finished, pass_of, report_hit
from .config import FeatureConfig, validate
from .plan import plan
from .shards import build_in_shards
from .sizes import combine, size_parts

log = logging.getLogger(__name__)


def extract(cfg: FeatureConfig, shards: int = 1, engine: str = "local", ray_address: str | None = None,
            ray_actors: int | None = None, quiet: bool = False, models: BuiltBackbone | None = None) -> str:
    """The path of the finished cache for `cfg` (FeatureConfig): a hit, resumed, or built.

    shards: cut each split into this many contiguous ranges, extracted one by one and merged (a
    killed run resumes at the shard it stopped in); engine: "local" (this process) or "ray" (the
    shards on Ray actors: ray_address joins a cluster, None starts a local one; ray_actors how many,
    None: one per GPU, else one per node); quiet: no progress bars; models: a BuiltBackbone to reuse
    across calls (None: built here). PipelineError (one line) for anything a user can fix."""
    if shards < 1:
        raise SettingError("shards", f"expected N >= 1, got {shards}", "extract")
    if ray_actors is not None and ray_actors < 1:
        raise SettingError("ray_actors", f"expected N >= 1 (or None: one per GPU, else per node), got {ray_actors}",
                           "extract")
    if engine not in ("local", "ray"):
        raise SettingError("engine", f"expected local or ray, got {engine!r}", "extract")
    p = plan(cfg)
    if report_hit(p):
        return p.path
    if len(p.cfg.image_sizes) > 1:     # each size its own cache (a hit, or built as below), then side by side
        return combine(p, [extract(c, shards, engine, ray_address, ray_actors, quiet, models)
                           for c in size_parts(p.cfg)], quiet)
    if p.precision != p.cfg.precision:
        log.info(f"precision: {p.cfg.precision} -> {p.precision}")
    if shards > 1 or engine != "local":
        return build_in_shards(p, shards, engine, ray_address, ray_actors, quiet)
    return build_caches([p], quiet, models)[0]


def extract_many(cfgs: list, quiet: bool = False) -> list:
    """The finished caches for several configurations, each built once: those that differ only in
    layers, pooling or store dtype come out of one forward pass together; a size of several-size
    configurations is built once. Paths in the order given."""
    datasets = {}
    plans = [plan(c, datasets) for c in cfgs]
    distinct = dict((p.key, p) for p in plans)
    several = {k: p for k, p in distinct.items() if len(p.cfg.image_sizes) > 1 and not report_hit(p)}
    sizes = {k: [plan(c, datasets) for c in size_parts(p.cfg)] for k, p in several.items()}
    one = {**{k: p for k, p in distinct.items() if len(p.cfg.image_sizes) == 1},
           **{q.key: q for qs in sizes.values() for q in qs}}        # the one-size caches, each once
    todo = [p for p in one.values() if not report_hit(p)]
    passes = {}
    for p in todo:
        passes.setdefault(pass_of(p), []).append(p)
    done = len(one) - len(todo)
    for i, group in enumerate(passes.values(), 1):
        c = group[0].cfg
        log.info(f"caches: {done} of {len(one)} done; pass {i} of {len(passes)} builds {len(group)} "
                 f"({c.image_size} px, {c.interpolation}, views {c.views}; layers "
                 f"{' | '.join(p.cfg.layer for p in group)})")
        build_caches(group, quiet)
        done += len(group)
    for key, p in several.items():
        combine(p, [q.path for q in sizes[key]], quiet)
    return [p.path for p in plans]


def find_cache(cfg: FeatureConfig) -> str:
    """Path of the finished cache that `cfg` (FeatureConfig) selects; PipelineError if it has not been
    built (or is damaged). A query: it moves and writes nothing (building is `extract`'s)."""
    p = plan(cfg)
    if not is_finished(p.path, p.key):
        raise PipelineError(f"no cache for these settings at {p.path}; build it first with extract (the features "
                            "command) and the same settings")
    return p.path


def check_cache_settings(given: dict, path: str, made: dict) -> None:
    """A cache passed by its path (`--cache`) beside stage-one settings: each setting in `given` (name ->
    value: those typed, at their default or not) must be what the cache was made with (`made`, its
    provenance's settings), or a head would train on other features than the options say; SettingError
    naming the first that is not. The given values are spelled as `validate` spells them on top of the
    cache's own settings (a value that cannot describe this cache is refused as such). Settings the file
    does not hold by value (the data's path, the dataset, where caches live) are not compared;
    precision auto matches any."""
    if not given:
        return
    fields = {f.name for f in dataclasses.fields(FeatureConfig)} - {"dataset", "precision", "weights"}
    base = {k: made[k] for k in fields & set(made)}
    if made.get("weights") in ("imagenet", "random"):         # a weights file may be gone: not revalidated
        base["weights"] = made["weights"]
    try:
        validate(FeatureConfig(**base))
    except (SettingError, TypeError):                        # e.g. a synthetic cache's {"layer": "synthetic"}
        raise SettingError(min(given), f"--cache {path} was not made from stage-one settings, so the option cannot "
                           "be checked against it; drop the option", "FeatureConfig") from None
    cfg = validate(FeatureConfig(**{**base, **given}))
    given = set(given) | ({"layer"} if "pooling" in given else set())      # validate folds pooling into layer
    for name in sorted(given & set(made)):
        mine, theirs = getattr(cfg, name), made[name]
        if name == "dataset" or (name == "precision" and mine == "auto"):
            continue
        if json.loads(json.dumps(mine)) != theirs:
            raise SettingError(name, f"expected the value --cache {path} was made with, {theirs!r}, got {mine!r}; "
                               "drop the option to use that cache, or drop --cache to select one by the options",
                               "FeatureConfig")
