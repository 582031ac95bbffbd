"""`python -m jcompose.convert`: both directions, exact round trips, clear errors."""

import json

import ldm_fixtures as fx
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jcompose import convert
from jcompose.models import loading


def _flat(params):
    return {k: np.asarray(v) for k, v in flatten_dict(params).items()}


def test_controlnet_round_trip_is_exact(tiny_bases, tmp_path):
    src = tiny_bases["sd15"] / "controlnet"
    flax_only = tmp_path / "flax"
    loading.export_diffusers(*_module_params(src), flax_only, formats=("msgpack",))
    assert convert.main(["to-diffusers", str(flax_only), str(tmp_path / "pt")]) == 0
    assert sorted(p.name for p in (tmp_path / "pt").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert convert.main(["to-flax", str(tmp_path / "pt"), str(tmp_path / "back")]) == 0
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["config.json", "diffusion_flax_model.msgpack"]
    before = _flat(loading.load_controlnet(flax_only).params)
    after = _flat(loading.load_controlnet(tmp_path / "back").params)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype
        np.testing.assert_array_equal(before[key], after[key], err_msg=str(key))


def _module_params(folder):
    loaded = loading.load_controlnet(folder, weights="msgpack")
    return loaded.module, loaded.params


def test_whole_base_folder_converts(tiny_bases, tmp_path):
    reports = convert.convert(tiny_bases["sd21-base"], tmp_path / "out", "diffusers", dtype="float16")
    assert len(reports) == 6  # 4 models + tokenizer + scheduler copied
    text = loading.load_text_encoder(tmp_path / "out" / "text_encoder")
    ref = loading.load_text_encoder(tiny_bases["sd21-base"] / "text_encoder", weights="msgpack")
    a, b = _flat(text.params), _flat(ref.params)
    for key in a:  # float16 on disk: equal up to the float16 rounding
        np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-4)
    assert (tmp_path / "out" / "tokenizer" / "vocab.json").is_file()


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--help"])
    out = capsys.readouterr().out
    assert "to-flax" in out and "to-diffusers" in out
    for folder, message in (("missing", "missing: folder not found"), ("empty", "neither a model folder")):
        if folder == "empty":
            (tmp_path / "empty").mkdir()
        with pytest.raises(SystemExit) as exit_info:  # one `error:` line, exit status 2, as every entry point
            convert.main(["to-flax", str(tmp_path / folder), str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_sd_checkpoint_prediction_type_reaches_the_written_scheduler(prediction, tmp_path, capsys):
    """`convert sd-ckpt --prediction-type` (v_prediction for the 768-px SD 2.1) is what the written
    scheduler_config.json says (the field diffusers' schedulers read) and what jcompose's loader reads."""
    from safetensors.numpy import save_file

    src = tmp_path / "v2-1_768-ema-pruned.safetensors"
    save_file(fx.sd_state_dict(1), str(src))
    flags = ["--prediction-type", prediction] if prediction != "epsilon" else []  # epsilon: the default
    assert convert.main(["sd-ckpt", str(src), str(tmp_path / "base"), "--sample-size", "8", "--head-channels",
                         "16", *flags]) == 0
    assert prediction in capsys.readouterr().out  # the report says which
    written = json.loads((tmp_path / "base" / "scheduler" / "scheduler_config.json").read_text())
    assert written["prediction_type"] == prediction
    assert loading.load_pipeline(tmp_path / "base", ("scheduler",)).scheduler.prediction_type == prediction
