import dataclasses

import pytest

from pipeline.features import config as C
from pipeline.features.config import FeatureConfig
from pipeline.features.plan import plan, provenance


@pytest.fixture
def base(cifar_dir, tmp_path):
    return FeatureConfig(data_dir=cifar_dir, weights="random", image_size=32, precision="float32",
                         cache_dir=str(tmp_path / "c"))


CHANGES = {"layer": "fc1", "image_size": 40, "interpolation": "area", "store_dtype": "float16",  # keyed
           "weights_seed": None, "seed": 1, "precision": "bfloat16",                               # resolved
           "limit": 3, "splits": ("test",),                                                        # fingerprint
           "batch_size": 7, "cache_dir": None}                                                     # not keyed


def test_the_key_follows_the_declared_roles(base, tmp_path):
    """Changing a keyed, resolved or fingerprint setting changes the key; a not-keyed one does not."""
    key = plan(base).key
    for f in dataclasses.fields(FeatureConfig):
        value = CHANGES.get(f.name)
        if value is None:
            value = str(tmp_path / "other") if f.name == "cache_dir" else None
        if value is None:
            continue
        other = plan(dataclasses.replace(base, **{f.name: value})).key
        assert (other == key) == (f.metadata["key"] == C.NOT_KEYED), f.name


def test_payload_is_exactly_the_keyed_settings_plus_what_resolved(base):
    p = plan(base)
    assert set(p.key_payload) == {"backbone", "preprocessing", "weights", "dataset_fingerprint", "precision",
                                  *base.keyed()}
    assert p.key_payload["weights"] == {"kind": "random", "seed": 0, "init": p.weights["init"]}
    prov = provenance(p, {"train": (0, 30)}, "f" * 64, merged_from_shards=2)
    assert prov["key"] == p.key and prov["settings"]["precision_requested"] == "float32"
    assert prov["merged_from_shards"] == 2 and prov["split_sizes"] == {"train": 30, "test": 6}
