"""--precision auto: the hardware's native dtypes, and between float32 and bfloat16 a measurement."""
import json

import pytest

from pipeline.features import precision as pr


FAST_HALF = {"float32": 100.0, "float16": 400.0, "bfloat16": 300.0}   # a measurement where half precision wins


@pytest.mark.parametrize("cuda,flags,want,measured", [
    (9.0, {"avx2", "avx512_bf16"}, "float16", ("float32", "float16", "bfloat16")),   # a Hopper GPU: all three
    (7.5, {"avx2"}, "float16", ("float32", "float16")),                            # a Turing GPU: no bfloat16
    (False, {"avx2", "fma", "avx512f"}, "float32", None),    # no native bf16 (it would be emulated): no probe
    (False, {"avx512f", "avx512_bf16"}, "bfloat16", ("float32", "bfloat16")),   # AVX512-BF16
    (False, {"amx_tile", "amx_bf16"}, "bfloat16", ("float32", "bfloat16")),     # AMX
])
def test_auto_precision_on_each_kind_of_machine(monkeypatch, cuda, flags, want, measured):
    asked = []
    monkeypatch.setattr(pr, "measure", lambda dtypes: asked.append(tuple(dtypes)) or {d: FAST_HALF[d] for d in dtypes})
    assert pr.resolve_precision("auto", cuda=cuda, flags=flags) == want
    assert asked == ([measured] if measured else [])
    float32 = "tensorfloat32" if cuda and cuda >= 8.0 else "float32"                # Ampere on: float32 is TF32
    assert pr.resolve_precision("float32", cuda=cuda, flags=flags) == float32        # an explicit choice stays
    monkeypatch.setattr(pr, "measure", lambda dtypes: {d: 500.0 if d == "float32" else 100.0 for d in dtypes})
    assert pr.resolve_precision("auto", cuda=cuda, flags=flags) == (float32 if measured else "float32")
    assert pr.policy_name(float32) == "float32"


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t: other\n")
    assert pr.cpu_flags(str(tmp_path / "cpuinfo")) == {"fpu", "avx2", "avx512_bf16"}
    assert pr.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("rates,want", [({"float32": 225.0, "bfloat16": 138.0}, "float32"),    # Xeon, no AMX
                                        ({"float32": 100.0, "bfloat16": 190.0}, "bfloat16")])  # AMD EPYC
def test_between_float32_and_bfloat16_the_measurement_decides_once_per_machine(tmp_path, monkeypatch, capsys,
                                                                                rates, want):
    calls = []
    monkeypatch.setattr(pr, "measure", lambda dtypes: calls.append(1) or rates)
    flags = {"avx512f", "avx512_bf16"}
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == want
    assert f"precision auto: {want}" in capsys.readouterr().err            # said once, with both rates
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == want
    assert len(calls) == 1 and capsys.readouterr().err == ""               # remembered: not measured again
    memo = json.load(open(tmp_path / pr.MEMO))
    assert [m["choice"] for m in memo.values()] == [want]
    pr.resolve_precision("auto", cuda=False, flags=flags | {"amx_bf16"}, memo_dir=str(tmp_path))
    assert len(calls) == 2                                                  # another machine: measured
    assert pr.resolve_precision("auto", cuda=False, flags={"avx2"}, memo_dir=str(tmp_path)) == "float32"
    assert len(calls) == 2                                                  # no native bf16: nothing to measure


def test_the_probe_measures_both_dtypes():
    rates = pr.measure_rates(seconds=0.05)
    assert set(rates) == {"float32", "bfloat16"} and all(r > 0 for r in rates.values())


def test_the_probe_computes_in_each_dtype_it_measures():
    """float16 (a GPU's candidate) is probed in float16, not in another half precision."""
    import keras
    for dtype in ("float32", "float16", "bfloat16"):
        model = pr.probe_model(keras, dtype)
        assert {layer.compute_dtype for layer in model.layers} == {dtype}
        assert {w.dtype for w in model.weights} == {"float32"}


def test_the_gpu_capability_is_read_from_nvidia_smi(tmp_path):
    from pipeline.device import gpu_capability
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 9.0\n")
    tool.chmod(0o755)
    assert gpu_capability(str(tool)) == 9.0 and gpu_capability(str(tmp_path / "absent")) is None


def test_cpuinfo_fields_are_read_by_their_whole_key(tmp_path):
    (tmp_path / "cpuinfo").write_text("cpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R)\n")
    assert pr.cpuinfo_field("model", str(tmp_path / "cpuinfo")) == "143"
    assert pr.cpuinfo_field("model name", str(tmp_path / "cpuinfo")) == "Intel(R) Xeon(R)"
    assert pr.cpuinfo_field("flags", str(tmp_path / "cpuinfo")) == ""


def test_the_probe_names_the_dtypes_as_they_compute(monkeypatch, capsys):
    """On an H200 the probe's line said "float32" where the run then computed (and was keyed) as TF32."""
    monkeypatch.setattr(pr, "measure", lambda dtypes: {d: 500.0 if d == "float32" else 100.0 for d in dtypes})
    assert pr.resolve_precision("auto", cuda=9.0, flags=set()) == "tensorfloat32"
    said = capsys.readouterr().err
    assert "precision auto: tensorfloat32 on this GPU (probe: tensorfloat32 500.0, float16 100.0" in said


def test_the_variables_that_choose_the_backends_kernels_are_part_of_the_machine(tmp_path, monkeypatch, capsys):
    """oneDNN held below AVX512-BF16 makes bfloat16 0.35x float32 on a CPU whose flags list avx512_bf16 (an AMD
    EPYC, Zen 4): an answer measured without the variable must not be taken with it, nor the other way round."""
    for name in pr.KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    flags = {"avx512f", "avx512_bf16"}
    assert set(pr.machine(flags)) == {"cpu", "flags", "cores", "backend", "versions"}   # the key memos already have
    calls, answers = [], iter([{"float32": 30.0, "bfloat16": 58.0}, {"float32": 30.0, "bfloat16": 10.7}])
    monkeypatch.setattr(pr, "measure", lambda dtypes: calls.append(1) or next(answers))
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == "bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert pr.machine(flags)["kernel_env"] == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == "float32"
    assert len(calls) == 2                                                   # measured under the variable
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == "float32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == "bfloat16"
    assert len(calls) == 2                                                   # each answer remembered under its own
    assert len(json.load(open(tmp_path / pr.MEMO))) == 2


class _Lacking:
    """A probe model whose backend has no kernel for its dtype here (oneDNN held to AVX2: no bfloat16 convolutions)."""
    def predict_on_batch(self, x):
        raise RuntimeError("could not create a primitive descriptor for the convolution forward propagation primitive")


def test_a_dtype_the_backend_cannot_run_measures_0_and_is_not_chosen(tmp_path, monkeypatch, capsys):
    real = pr.probe_model
    monkeypatch.setattr(pr, "probe_model", lambda keras, dtype: _Lacking() if dtype == "bfloat16" else real(keras, dtype))
    rates = pr.measure_rates(seconds=0.05)
    assert rates["bfloat16"] == 0 and rates["float32"] > 0
    calls = []
    monkeypatch.setattr(pr, "measure", lambda dtypes: calls.append(1) or {"float32": 29.1, "bfloat16": 0.0})
    flags = {"avx512f", "avx512_bf16"}
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == "float32"
    said = capsys.readouterr().err
    assert "(probe: float32 29.1 images/s of VGG19 block4; bfloat16 cannot run here;" in said
    assert pr.resolve_precision("auto", cuda=False, flags=flags, memo_dir=str(tmp_path)) == "float32"
    assert len(calls) == 1                                                   # the answer with a 0 is remembered too


def test_a_float32_the_backend_cannot_run_is_not_hidden(monkeypatch):
    monkeypatch.setattr(pr, "probe_model", lambda keras, dtype: _Lacking())
    with pytest.raises(RuntimeError, match="primitive descriptor"):
        pr.measure_rates(seconds=0.05)


def test_a_failure_without_a_message_measures_0_too(monkeypatch):
    class Silent:
        def predict_on_batch(self, x):
            raise RuntimeError()
    real = pr.probe_model
    monkeypatch.setattr(pr, "probe_model", lambda keras, dtype: Silent() if dtype == "bfloat16" else real(keras, dtype))
    assert pr.measure_rates(seconds=0.05)["bfloat16"] == 0
