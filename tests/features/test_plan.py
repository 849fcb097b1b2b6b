import dataclasses

import pytest

from pipeline.features import config
from pipeline.features.config import FeatureConfig
from pipeline.features.plan import plan, provenance


@pytest.fixture
def base(cifar_dir, tmp_path):
    return FeatureConfig(data_dir=cifar_dir, weights="random", image_size=32, precision="float32",
                         cache_dir=str(tmp_path / "c"))


# every field: (settings the change needs in both configs, the change); a field in neither dict fails
CHANGES = {"layer": ({}, "fc1"), "image_size": ({}, 40), "interpolation": ({}, "area"),             # keyed
           "store_dtype": ({}, "float16"), "views": ({}, "flip"),
           "shift_range": ({"views": "shift2"}, 0.25), "views_seed": ({"views": "shift2"}, 3),
           "weights_seed": ({}, 1), "precision": ({}, "bfloat16"),                                   # resolved
           "pooling": ({"layer": "block5_pool"}, "avg"), "weights": ({}, "WEIGHTS_FILE"),
           "limit": ({}, 3), "splits": ({}, ("test",)), "data_dir": ({}, "OTHER_DATA"),             # fingerprint
           "batch_size": ({}, 7), "cache_dir": ({}, "OTHER_DIR"), "max_archive_bytes": ({}, 10)}    # not keyed
EXEMPT = {  # fields whose change alone cannot move the key on these data, and where that is tested instead
    "dataset": "read only without --data-dir (Keras' download: no network in tests)",
    "on_bad_image": "changes the key through the images it leaves out: test_extract's skip test",
    "max_image_pixels": "changes the key through the images it refuses: test_extract's skip test",
}


def test_the_key_follows_the_declared_roles(base, tmp_path):
    """Changing a keyed, resolved or fingerprint setting changes the key; a not-keyed one does not.
    Every field is either changed here or exempt with a reason: a new field fails until it is listed."""
    from conftest import write_cifar10
    (tmp_path / "w.h5").write_bytes(b"weights")
    values = {"WEIGHTS_FILE": str(tmp_path / "w.h5"), "OTHER_DIR": str(tmp_path / "other"),
              "OTHER_DATA": write_cifar10(str(tmp_path / "d2"), seed=1).rsplit("/", 1)[0]}
    for f in dataclasses.fields(FeatureConfig):
        assert (f.name in CHANGES) != (f.name in EXEMPT), f"{f.name}: list it in CHANGES or EXEMPT"
        if f.name in EXEMPT:
            continue
        needs, value = CHANGES[f.name]
        one = dataclasses.replace(base, **needs)
        other = dataclasses.replace(one, **{f.name: values.get(value, value) if isinstance(value, str) else value})
        assert (plan(other).key == plan(one).key) == (f.metadata["key"] == config.NOT_KEYED), f.name


def test_payload_is_exactly_the_keyed_settings_plus_what_resolved(base):
    p = plan(base)
    assert set(p.key_payload) == {"backbone", "preprocessing", "weights", "dataset_fingerprint", "precision",
                                  *base.keyed()}
    assert p.key_payload["weights"] == {"kind": "random", "seed": 0, "init": p.weights["init"]}
    prov = provenance(p, {"train": (0, 30)}, "f" * 64, merged_from_shards=2)
    assert prov["key"] == p.key and prov["settings"]["precision_requested"] == "float32"
    assert prov["merged_from_shards"] == 2 and prov["split_sizes"] == {"train": 30, "test": 6}


def test_every_setting_that_changes_the_forward_pass_splits_passes(base):
    """pass_of is derived from the declarations: configurations differing in a keyed setting share a
    forward pass only if it declares shares_pass (layers, pooling, store dtype); a new keyed setting
    splits passes unless it says otherwise."""
    from pipeline.features.build import pass_of
    one = dataclasses.replace(base, layer="block5_pool")
    for f in dataclasses.fields(FeatureConfig):
        if f.name not in CHANGES or f.name in ("data_dir", "weights"):
            continue
        needs, value = CHANGES[f.name]
        if value in ("OTHER_DIR",):
            value = "/tmp/other-cache-dir"
        a = dataclasses.replace(one, **needs)
        b = dataclasses.replace(a, **{f.name: value})
        shared = pass_of(plan(a)) == pass_of(plan(b))
        changes_numbers = f.metadata["key"] != config.NOT_KEYED
        assert shared == (f.metadata["shares_pass"] or not changes_numbers), f.name
    assert {f.name for f in dataclasses.fields(FeatureConfig) if f.metadata["shares_pass"] and f.metadata["key"] != config.NOT_KEYED} \
        == {"layer", "pooling", "store_dtype"}


def test_a_hit_decodes_nothing_and_a_changed_file_is_noticed(folder_dir, tmp_path, monkeypatch):
    """The fingerprint is remembered by the files' identity: planning again decodes no image; a file
    rewritten (even with its old mtime), added or removed is decoded again."""
    import os

    import cv2
    import numpy as np
    from pipeline.features import image_folders
    cfg = FeatureConfig(data_dir=folder_dir, weights="random", image_size=32, precision="float32",
                        cache_dir=str(tmp_path / "c"))
    first = plan(cfg)
    decoded = []
    real = image_folders.decode_image
    monkeypatch.setattr(image_folders, "decode_image", lambda *a: decoded.append(a[0]) or real(*a))
    again = plan(cfg)
    assert again.key == first.key and again.opened is None and decoded == []
    assert again.dataset.class_names == first.dataset.class_names and decoded        # opened when needed
    path = os.path.join(folder_dir, "train", "cat", "000.png")
    st = os.stat(path)
    cv2.imwrite(path, np.full((32, 32, 3), 7, np.uint8))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))                              # same mtime: ctime tells
    decoded.clear()
    changed = plan(cfg)
    assert changed.key != first.key and decoded
    assert plan(cfg).key == changed.key
    os.remove(path)
    assert plan(cfg).key not in (first.key, changed.key)


def test_a_memo_entry_that_is_not_the_sources_own_is_corrected(folder_dir, tmp_path):
    """Found by fuzzing the cache folder's memos: a damaged or edited fingerprint in source-fingerprints.json
    made every `features` run fail with "the data changed while this run planned it; re-run the command",
    forever. Now the entry is corrected when the data is decoded, the line says so, and the re-run plans
    from the truth; a change of the files during a run is still told as such."""
    import json
    import os
    import shutil

    from pipeline.errors import PipelineError
    from pipeline.features.source_memo import MEMO
    cfg = FeatureConfig(data_dir=folder_dir, weights="random", image_size=32, precision="float32",
                        cache_dir=str(tmp_path / "c"))
    good = plan(cfg)
    path = os.path.join(cfg.cache_dir, MEMO)
    memo = json.load(open(path))
    for entry in memo.values():
        entry["fingerprint"] = "0" * 64
    json.dump(memo, open(path, "w"))
    wrong = plan(cfg)
    assert wrong.key != good.key and wrong.opened is None
    with pytest.raises(PipelineError, match=f"the fingerprint {MEMO} remembered for it was not its own .*corrected: "
                                            "re-run the command"):
        wrong.dataset
    again = plan(cfg)
    assert again.key == good.key and again.dataset.name == good.dataset.name
    stale = plan(cfg)                                       # from the memo; then a file is added before it opens
    shutil.copy(os.path.join(folder_dir, "train", "cat", "000.png"), os.path.join(folder_dir, "train", "cat", "new.png"))
    with pytest.raises(PipelineError, match="the data changed while this run planned it; re-run the command"):
        stale.dataset
    assert plan(cfg).opened is None                       # the new state was remembered as it was decoded


def test_one_size_keeps_its_key_and_several_sizes_are_keyed_by_all(base):
    """`--image-size 32` typed as text is the int 32 of every cache so far (no cache is orphaned);
    sizes in another order are the same cache, and every size is in the key."""
    one = plan(base)
    assert plan(dataclasses.replace(base, image_size="32")).key == one.key and one.key_payload["image_size"] == 32
    both = plan(dataclasses.replace(base, image_size="40+32"))
    assert both.key == plan(dataclasses.replace(base, image_size="32+40")).key != one.key
    assert both.key_payload["image_size"] == "32+40" and both.cfg.image_sizes == (32, 40)


def test_a_cache_folder_that_cannot_be_written_still_plans(base, monkeypatch):
    """A read-only cache folder (a team's shared caches) still serves cache hits: planning creates the folder if
    missing but does not ask to write there (what a miss writes fails then, in one line)."""
    import os
    os.makedirs(base.cache_dir)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if path == base.cache_dir else real_access(path, mode))
    assert plan(base).key
