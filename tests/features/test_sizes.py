"""Several image sizes side by side: each size its own cache (built once, reused), the several-size
cache their features concatenated, keyed by every size."""
import importlib
import os

import h5py
import numpy as np
import pytest
from conftest import run_captured, write_image_folders

from pipeline.errors import PipelineError
from pipeline.features import sizes
from pipeline.features.cache import load_cache, read_provenance
from pipeline.features.config import FeatureConfig
from pipeline.features.extract import extract, extract_many
from pipeline.features.plan import plan
from pipeline.heads.normalize import blocks_of

LAYER = "block4_pool:avg2x2,block5_pool:avg"       # 2,048 + 512 values at any size


def cfg(data, cache_dir, image_size, layer=LAYER, **kw):
    return FeatureConfig(data_dir=data, cache_dir=str(cache_dir), weights="random", precision="float32",
                         layer=layer, image_size=image_size, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folders(str(tmp_path_factory.mktemp("imgs")), per_class=3)


def test_several_sizes_are_the_one_size_caches_side_by_side(data, tmp_path, capsys):
    one = {s: extract(cfg(data, tmp_path, s), quiet=True) for s in (32, 64)}
    code, out, err = run_captured(capsys, "features", "--data-dir", data, "--cache-dir", tmp_path, "--weights",
                                  "random", "--precision", "float32", "--layer", LAYER, "--image-size", "64+32", "--quiet")
    assert code == 0 and err.count("cache hit") == 2          # both sizes found, no backbone pass
    both = load_cache(out[-1])
    meta = read_provenance(out[-1])
    assert meta["settings"]["image_size"] == "32+64" and meta["key_payload"]["image_size"] == "32+64"
    assert [(p["image_size"], p["key"]) for p in meta["combined_from"]] == \
        [(s, read_provenance(one[s])["key"]) for s in (32, 64)]
    assert meta["key"] not in {read_provenance(p)["key"] for p in one.values()}
    with h5py.File(out[-1]) as h:                 # the attributes of a built file, stored as a built file's are
        assert {"split_sizes", "ranges", "class_names", "weights_sha256"} <= set(h.attrs)
    costs = [read_provenance(one[s])["extraction"] for s in (32, 64)]
    assert meta["extraction"]["seconds"] == pytest.approx(sum(c["seconds"] for c in costs), abs=0.02)  # what a study
    assert meta["extraction"]["images"] == costs[0]["images"] == 18                    # reports as img/s
    assert meta["split_sizes"] == read_provenance(one[32])["split_sizes"] and meta["dataset"] == read_provenance(one[32])["dataset"]
    for split in ("train", "test"):
        parts = [load_cache(one[s])[split] for s in (32, 64)]
        x, y, m = both[split]
        assert x.shape == (len(y), 2 * (2048 + 512))
        assert np.array_equal(x, np.concatenate([p[0] for p in parts], axis=1))
        assert np.array_equal(y, parts[0][1]) and list(m["ids"]) == list(parts[0][2]["ids"])
    assert blocks_of(meta, x.shape[1]) == [2048, 512, 2048, 512]      # the heads' layer blocks, size after size
    assert extract(cfg(data, tmp_path, "32+64"), quiet=True) == out[-1]   # a hit: the same file


def test_a_size_not_built_yet_is_built_then_combined_and_views_stay_rows(data, tmp_path):
    path = extract(cfg(data, tmp_path, "32+48", views="flip"), quiet=True)
    x, y, _ = load_cache(path)["train"]
    part = load_cache(extract(cfg(data, tmp_path, 48, views="flip"), quiet=True))["train"][0]
    assert x.shape == (len(y), 2, 2 * 2560) and np.array_equal(x[..., 2560:], part)


def test_extract_many_builds_each_size_once(data, tmp_path, monkeypatch):
    built, module = [], importlib.import_module("pipeline.features.extract")     # the module, not its function
    real = module.build_caches
    monkeypatch.setattr(module, "build_caches",
                        lambda group, quiet: built.extend(p.cfg.image_size for p in group) or real(group, quiet))
    paths = extract_many([cfg(data, tmp_path, 32), cfg(data, tmp_path, "32+48"), cfg(data, tmp_path, "48+32")],
                         quiet=True)
    assert sorted(built) == [32, 48] and paths[1] == paths[2] != paths[0]
    assert read_provenance(paths[1])["settings"]["image_size"] == "32+48"


def test_parts_that_are_not_the_plans_sizes_are_refused(data, tmp_path):
    one = {s: extract(cfg(data, tmp_path, s), quiet=True) for s in (32, 48)}
    p = plan(cfg(data, tmp_path, "32+48"))
    with pytest.raises(PipelineError, match="not the 32 px features"):
        sizes.combine(p, [one[48], one[32]], quiet=True)          # the wrong order: not side by side as keyed
    other = extract(cfg(data, tmp_path, 48, weights_seed=1), quiet=True)
    with pytest.raises(PipelineError, match="not the 48 px features of the same data, weights"):
        sizes.combine(p, [one[32], other], quiet=True)
    assert not os.path.exists(p.path)                               # nothing written


def test_sharded_sizes_give_the_same_cache(data, tmp_path):
    """--shards applies to each size's cache; the combined numbers are those of an unsharded run."""
    whole = load_cache(extract(cfg(data, tmp_path / "a", "32+48"), quiet=True))["train"][0]
    sharded = load_cache(extract(cfg(data, tmp_path / "b", "32+48"), shards=2, quiet=True))["train"][0]
    assert np.array_equal(whole, sharded) and not list((tmp_path / "b").glob("*.shard-*"))


def test_fc_layers_with_random_weights_combine(data, tmp_path):
    """fc1/fc2 at another size than 224 are drawn in that size's shapes: the parts' weights differ by size
    (each part's SHA-256 kept in combined_from) while their identity (random, seed) is one."""
    path = extract(cfg(data, tmp_path, "32+64", layer="fc2"), quiet=True)     # fc1 on 1x1x512 and 2x2x512
    meta = read_provenance(path)
    shas = [p["weights_sha256"] for p in meta["combined_from"]]
    assert len(set(shas)) == 2 and meta["weights_sha256"] not in shas
    assert load_cache(path)["train"][0].shape[1] == 2 * 4096


def test_combining_says_up_front_when_the_disk_is_too_small(data, tmp_path, capsys, monkeypatch):
    import pipeline.features.build as build
    from pipeline.text_table import file_size
    one = {s: extract(cfg(data, tmp_path, s), quiet=True) for s in (32, 64)}
    monkeypatch.setattr(build, "free_bytes", lambda path: 1000)                # the disk: 1 KB free
    code, out, err = run_captured(capsys, "features", "--data-dir", data, "--cache-dir", tmp_path, "--weights",
                                  "random", "--precision", "float32", "--layer", LAYER, "--image-size", "32+64", "--quiet")
    need = sum(load_cache(one[s])[split][0].nbytes for s in one for split in ("train", "test"))
    assert code == 0 and f"{tmp_path}: combining the sizes needs about {file_size(need)} more (the finished file, as " \
        "large as its parts together) and the disk has 0.0 MB free" in err
