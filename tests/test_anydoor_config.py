"""AnyDoor's configs (configs/anydoor.py): the released settings and the paper variant (what differs,
by field), the registration, the bases the method refuses, each named by its file and field, and an export
it cannot make (AnyScene's too).
"""

from pathlib import Path

import pytest

from configs.anydoor import get_config
from input_pipeline.anydoor_mixture import RELEASED_WEIGHTS
from jcompose.methods import anydoor
from jcompose.models import tiny
from jcompose.models.diffusers_config import ConfigError


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_released_config_and_registration():
    from jcompose import methods

    c = get_config("")
    assert (c.optim.lr, c.optim.weight_decay, c.optim.clip_norm, c.train.batch_size) == (1e-5, 1e-2, 0.0, 32)
    assert (c.data.image_size, c.data.reference_size, c.compute_dtype) == (512, 224, "bfloat16")
    assert (c.sample.steps, c.sample.guidance_scale, c.sample.eta) == (50, 5.0, 0.0)
    assert c.model.dinov2_interpolation == "dinov2_hub" and c.model.context_dim == 1024
    assert c.model.train_projector and c.model.id_dropout == 0.0
    assert dict(c.data.weights) == {k: float(v) for k, v in RELEASED_WEIGHTS.items()}
    assert isinstance(methods.build(c), anydoor.AnyDoorMethod)
    with pytest.raises(ValueError, match=r"config.data.roots: no dataset folder given; .*config.data.roots.ytb_vos"):
        methods.build(c).make_source()
    # released details kept by default (each a named option)
    assert (c.variant, c.data.box_mask_prob, c.sample.crop_expand_tenths) == ("released", 0.3, (15, 30))
    assert (c.data.frame_order, c.model.hint_init) == ("released", "torch")
    assert (c.sample.collage_mask, c.sample.drop_first_row, c.sample.margin) == ("run_inference", True, 5)
    # the paper's tables: the box-only model and a fixed 2.0 zoom (randint(20, 21) / 10), nothing else
    paper = get_config("paper")
    assert (paper.variant, paper.data.box_mask_prob, paper.sample.crop_expand_tenths) == ("paper", 1.0, (20, 21))
    changed = {k for k, v in _flat(paper.to_dict()).items() if _flat(c.to_dict()).get(k) != v}
    assert changed == {"variant", "data.box_mask_prob", "sample.crop_expand_tenths"}
    with pytest.raises(ValueError, match="unknown variant 'papers'"):
        get_config("papers")
    c.model.dinov2_interpolation = "nearest"
    with pytest.raises(ConfigError, match="dinov2_interpolation = 'nearest'"):
        anydoor.AnyDoorMethod(c)


def test_a_base_that_is_not_sd2_is_refused_by_file(tmp_path):
    import json
    import shutil

    workdir = tmp_path / "run"
    method = anydoor.AnyDoorMethod(get_config("tiny"))
    method.init(str(workdir))
    sd15 = tiny.write_tiny_base(tmp_path / "sd15", "sd15", formats=("msgpack",))
    with pytest.raises(ConfigError, match=r"sd15/unet/config.json: cross_attention_dim = 32.* SD 2.x base"):
        method.load_models(sd15, Path(workdir) / "dinov2")
    v_base = tmp_path / "sd21-v"
    shutil.copytree(Path(workdir) / "base" / "sd21-base", v_base)
    scheduler = v_base / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(ConfigError, match=r"scheduler_config.json: prediction_type = 'v_prediction'"):
        method.load_models(v_base, Path(workdir) / "dinov2")


@pytest.mark.parametrize("spec", ["configs/anydoor.py:tiny", "configs/anyscene.py:tiny"])
def test_an_export_a_method_cannot_make_is_refused(spec):
    """AnyDoor and AnyScene have no export (their checkpoints are the models): `train.export=True` is refused
    when the method is built, before anything trains, not skipped at the end without a word."""
    from configs.common import ConfigError as ConfigFieldError
    from configs.common import load
    from jcompose import methods

    config = load(spec)
    config.train.export = True
    with pytest.raises(ConfigFieldError, match=r"config.train.export = True: any\w+ has no export"):
        methods.build(config)
    config.train.export = False
    methods.build(config)
