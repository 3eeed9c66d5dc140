"""The inference precision: chosen per CPU (flags faked both ways, and this machine's own),
set on the runtime that computes, refused where it cannot run, shown by the server.

The accuracy budget itself (bf16 labels against fp32's on the hand-set ResNet-101 and on a
trained model's val split) is kept by tests/inference/test_resnet101.py and
tests/train/test_eval.py.
"""

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.settings import Settings
from model.inference import precision
from model.inference.precision import bf16_units, choose_precision, cpu_flags
from model.inference.runtimes import load_runtime

AMX = {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}  # a Sapphire Rapids
ZEN4 = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}  # an EPYC Genoa
ZEN3 = {"avx2", "fma", "sse4_2"}  # an EPYC Milan: no bf16 units


@pytest.mark.parametrize(("flags", "want", "unit"), [(AMX, "bf16", "AMX-BF16"),
                                                     (ZEN4, "bf16", "AVX512-BF16"),
                                                     (ZEN3, "fp32", "no AMX-BF16")])
def test_auto_takes_bf16_only_on_a_cpu_with_bf16_units(flags, want, unit):
    choice = choose_precision("auto", "openvino", "fp32", flags=flags)
    assert choice.name == want and choice.reason.startswith(f"auto: {want}"), choice
    assert unit in choice.reason


@pytest.mark.parametrize("flags", [AMX, ZEN3])
def test_fp32_pins_fp32_on_every_cpu(flags):
    assert choose_precision("fp32", "openvino", flags=flags).name == "fp32"


def test_bf16_is_refused_on_a_cpu_without_bf16_units():
    assert choose_precision("bf16", "openvino", flags=ZEN4).name == "bf16"
    with pytest.raises(ValueError, match="needs a CPU with AMX-BF16 or AVX512-BF16"):
        choose_precision("bf16", "openvino", flags=ZEN3)


@pytest.mark.parametrize("runtime", ["tensorflow", "onnxruntime"])
def test_runtimes_that_cannot_switch_compute_in_the_exports_precision(runtime):
    for requested in ("auto", "fp32"):
        choice = choose_precision(requested, runtime, "fp32", flags=AMX)
        assert choice.name == "fp32" and runtime in choice.reason
    assert choose_precision("auto", runtime, "int8", flags=AMX).name == "int8"
    assert choose_precision("bf16", runtime, "bf16", flags=AMX).name == "bf16"  # built so
    with pytest.raises(ValueError, match=f"the {runtime} runtime .* cannot switch it to bf16"):
        choose_precision("bf16", runtime, "fp32", flags=AMX)


def test_an_int8_export_keeps_its_int8_layers_whatever_the_float_precision():
    # auto: the float layers beside the int8 ones measured faster in fp32 than in bf16.
    choice = choose_precision("auto", "openvino", "int8", flags=AMX)
    assert choice.name == "fp32" and choice.reason.endswith("its int8 layers stay int8")
    choice = choose_precision("bf16", "openvino", "int8", flags=AMX)
    assert choice.name == "bf16" and choice.reason.endswith("its int8 layers stay int8")


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, fp32, bf16"):
        choose_precision("fp8", "openvino")


def test_this_machines_flags_are_read_from_proc_cpuinfo():
    flags = cpu_flags()
    text = Path("/proc/cpuinfo").read_text()
    assert flags and all(flag in text for flag in list(flags)[:20])
    assert bf16_units() == [name for flag, name in precision.BF16_UNITS.items()
                            if f" {flag}" in text]


@pytest.mark.parametrize("requested", ["auto", "fp32", "bf16"])
def test_openvino_compiles_in_the_chosen_precision(tiny_saved_model, requested):
    """The hint reaches OpenVINO's compiled model, for the labels and the probabilities
    alike: without it OpenVINO itself would pick bf16 on a CPU with bf16 units."""
    if requested == "bf16" and not bf16_units():
        pytest.skip("this CPU has no AMX-BF16 or AVX512-BF16")
    segmenter = load_runtime(tiny_saved_model, "openvino", inference_precision=requested)
    want = choose_precision(requested, "openvino", "fp32")
    assert segmenter.inference_precision == want
    hint = {"fp32": "f32", "bf16": "bf16"}[want.name]
    for request in (segmenter._request, segmenter._probabilities_request()):
        compiled = request.get_compiled_model()
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in (hint, {
            "f32": "<Type: 'float32'>", "bf16": "<Type: 'bfloat16'>"}[hint])


def test_settings_refuse_bf16_where_it_cannot_run_at_start(tiny_saved_model, monkeypatch):
    with pytest.raises(ValidationError, match="ATROUS_INFERENCE_PRECISION: the tensorflow "
                       "runtime computes in the export's own precision"):
        Settings(model=tiny_saved_model, runtime="tensorflow", inference_precision="bf16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(ZEN3))
    with pytest.raises(ValidationError, match="needs a CPU with AMX-BF16"):
        Settings(model=tiny_saved_model, inference_precision="bf16")
    assert Settings(model=tiny_saved_model, inference_precision="fp32").inference_precision \
        == "fp32"


def test_server_says_which_precision_runs_and_why(tiny_saved_model, server_factory):
    server = server_factory({"ATROUS_MODEL": str(tiny_saved_model),
                             "ATROUS_INFERENCE_PRECISION": "fp32"})
    info = httpx.get(server.url + "/v1/model").json()
    assert info["runtime"] == "openvino"
    assert (info["inference_precision"], info["inference_precision_reason"]) == (
        "fp32", "fp32: pinned (DeepLab's exact arithmetic)")
    assert "inference precision fp32: pinned" in server.log
