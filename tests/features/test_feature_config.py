import pytest

from pipeline.errors import SettingError, reason
from pipeline.features.config import FeatureConfig, validate


def test_defaults_are_the_notebook():
    cfg = validate(FeatureConfig())
    assert (cfg.layer, cfg.image_size, cfg.interpolation, cfg.splits) == ("fc2", 224, "cubic", ("train", "test"))


@pytest.mark.parametrize("field,value,needle", [
    ("precision", "int8", "FeatureConfig.precision: expected one of"), ("store_dtype", "bf16", "FeatureConfig.store_dtype"),
    ("batch_size", 0, "FeatureConfig.batch_size"), ("image_size", 16, "FeatureConfig.image_size"),
    ("splits", "train,train", "FeatureConfig.splits"), ("on_bad_image", "ignore", "FeatureConfig.on_bad_image"),
    ("dataset", "mnist", "FeatureConfig.dataset"), ("layer", "block9_pool", "FeatureConfig.layer"),
    ("views", "mirror", "FeatureConfig.views"), ("cache_dir", "", "FeatureConfig.cache_dir"),
])
def test_each_bad_setting_names_the_setting_not_a_flag(field, value, needle):
    """The library names its parameter (the CLI says the flag: test_cli)."""
    with pytest.raises(SettingError, match=needle) as e:
        validate(FeatureConfig(**{field: value}))
    assert "--" not in str(e.value) and "make " not in str(e.value) and e.value.name == field


@pytest.mark.parametrize("value,needle", [("96+96", "distinct sizes"), ("32+64+96+128+160", "up to 4"),
                                          ("96+16", "expected 32..512"), ("96+x", "several joined by +"),
                                          ("96+", "several joined by +")])
def test_several_image_sizes_are_one_spelling_or_refused(value, needle):
    cfg = validate(FeatureConfig(image_size="160+96+128", layer="block5_pool"))
    assert (cfg.image_size, cfg.image_sizes) == ("96+128+160", (96, 128, 160))
    assert validate(FeatureConfig(image_size="128", layer="block5_pool")).image_size == 128   # one size: an int
    with pytest.raises(SettingError, match=needle):
        validate(FeatureConfig(image_size=value, layer="block5_pool"))


def test_reason_is_one_short_line():
    e = OSError("URL fetch failure on https://x: None -- [Errno -2] Name or service not known")
    assert reason(e) == "[Errno -2] Name or service not known"
    assert len(reason(Exception("a\nb " * 100))) <= 100


def test_every_setting_declares_how_it_enters_the_key():
    """A new FeatureConfig field without a key role fails here: the key is declared, not assembled by hand."""
    import dataclasses

    from pipeline.features import config
    roles = {f.name: f.metadata.get("key") for f in dataclasses.fields(FeatureConfig)}
    assert set(roles.values()) <= {config.KEYED, config.RESOLVED, config.FINGERPRINT, config.NOT_KEYED}, roles
    assert FeatureConfig().keyed() == {n: getattr(FeatureConfig(), n) for n, r in roles.items() if r == config.KEYED}
    assert roles["batch_size"] == roles["cache_dir"] == config.NOT_KEYED and roles["layer"] == config.KEYED


def test_adding_a_setting_is_one_declaration(cifar_dir, tmp_path):
    """A new stage-one setting is its field (default, key role, help, parser, axis): the CLI option, the
    parsed config, the study axis, the key and the forward-pass grouping all follow from it."""
    import argparse
    import dataclasses

    from pipeline.cli import add_feature_options, feature_config
    from pipeline.features import config
    from pipeline.features.build import pass_of
    from pipeline.features.plan import plan

    @dataclasses.dataclass
    class WithContrast(FeatureConfig):
        contrast: float = config.setting(1.0, config.KEYED, "a test-only setting: scale the images' contrast", parse=float,
                                    axis=True)

    p = argparse.ArgumentParser()
    add_feature_options(p, WithContrast)
    args = p.parse_args(["--contrast", "1.5", "--data-dir", cifar_dir, "--weights", "random", "--image-size", "32",
                         "--precision", "float32", "--cache-dir", str(tmp_path)])
    args.forward_batch_size = 8
    cfg = feature_config(args, WithContrast)
    assert cfg.contrast == 1.5 and cfg.batch_size == 8 and "contrast" in config.axes(WithContrast)
    one, other = plan(cfg), plan(dataclasses.replace(cfg, contrast=1.0))
    assert one.key != other.key and one.key_payload["contrast"] == 1.5       # keyed: a new value, a new file
    assert pass_of(one) != pass_of(other)                                    # changes the pass: not shared


def test_head_parameter_ranges_are_declared_once():
    """The CLI/sweep/study check (check_param) and the estimators' scikit-learn constraints come from
    one declaration: they accept and refuse the same values at every boundary."""
    import math

    from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints

    from pipeline.heads.config import PARAMS, check_param
    from pipeline.heads.validation import constraints
    probes = [-1, 0, 0.5, 1, 2.5, 3, 2 ** 32 - 1, 2 ** 32, math.inf, math.nan, True, "auto", None, "l2", "sqrt-l2",
              "none", "sqrt"]
    for name, param in PARAMS.items():
        for v in probes:
            try:
                ours = check_param(name, v) is not None or v is None
            except SettingError:
                ours = False
            try:
                validate_parameter_constraints(constraints([name]), {name: v}, caller_name="test")
                theirs = True
            except InvalidParameterError:
                theirs = False
            if param.kind is not bool and isinstance(v, bool) or param.kind is bool and v in (0, 1):
                continue      # bools as numbers and 0/1 as bools: the CLI parses strings, sklearn is strict
            if param.kind is int and isinstance(v, float) and not math.isnan(v) and v.is_integer() and v != math.inf:
                continue      # 3.0 for an int: the CLI reads "3", sklearn wants an int
            assert ours == theirs, (name, v, ours, theirs)
