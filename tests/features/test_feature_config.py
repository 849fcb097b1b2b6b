import pytest

from pipeline.errors import PipelineError, reason
from pipeline.features.config import FeatureConfig, validate


def test_defaults_are_the_notebook():
    cfg = validate(FeatureConfig())
    assert (cfg.layer, cfg.image_size, cfg.interpolation, cfg.splits) == ("fc2", 224, "cubic", ("train", "test"))


@pytest.mark.parametrize("field,value,needle", [
    ("precision", "int8", "--precision: expected one of"), ("store_dtype", "bf16", "--store-dtype"),
    ("batch_size", 0, "--batch-size"), ("image_size", 16, "--image-size"), ("splits", "train,train", "--splits"),
    ("on_bad_image", "ignore", "--on-bad-image"), ("dataset", "mnist", "--dataset"),
])
def test_each_bad_setting_names_the_option(field, value, needle):
    with pytest.raises(PipelineError, match=needle):
        validate(FeatureConfig(**{field: value}))


def test_reason_is_one_short_line():
    e = OSError("URL fetch failure on https://x: None -- [Errno -2] Name or service not known")
    assert reason(e) == "[Errno -2] Name or service not known"
    assert len(reason(Exception("a\nb " * 100))) <= 100


def test_every_setting_declares_how_it_enters_the_key():
    """A new FeatureConfig field without a key role fails here: the key is declared, not assembled by hand."""
    import dataclasses

    from pipeline.features import config as C
    roles = {f.name: f.metadata.get("key") for f in dataclasses.fields(FeatureConfig)}
    assert set(roles.values()) <= {C.KEYED, C.RESOLVED, C.FINGERPRINT, C.NOT_KEYED}, roles
    assert FeatureConfig().keyed() == {n: getattr(FeatureConfig(), n) for n, r in roles.items() if r == C.KEYED}
    assert roles["batch_size"] == roles["cache_dir"] == C.NOT_KEYED and roles["layer"] == C.KEYED
