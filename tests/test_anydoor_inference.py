"""AnyDoor composition (jcompose/methods/anydoor_inference.py) on the tiny model: batched objects equal
single calls with the same noise, placement rounds, shape control, the side-by-side picture, bad
input named by file."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.anydoor import get_config
from jcompose import cli
from jcompose.methods import anydoor
from jcompose.methods import anydoor_inference as inference
from jcompose.models import tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("anydoor_inference")
    method = anydoor.AnyDoorMethod(get_config("tiny"))
    params, frozen = method.init(str(workdir))
    return method, params, frozen, None, workdir


def randomised(tree, seed):
    return jax.tree_util.tree_map(jnp.asarray, tiny.random_params(jax.eval_shape(lambda: tree), seed))


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.uint8)


def _object(rng, target_centre, background_shape=(192, 192), seed_name="a"):
    mask = _disc((80, 80), (40, 40), 24)
    stripes = (np.indices((80, 80)).sum(0) // 6 % 2).astype(np.uint8)
    image = np.where(stripes[..., None] > 0, [200, 40, 40], [30, 30, 220]).astype(np.uint8)
    image = np.where(mask[..., None] > 0, image, rng.integers(0, 255, (80, 80, 3))).astype(np.uint8)
    return inference.ObjectInput(image, mask, _disc(background_shape, target_centre, 12),
                                 (f"{seed_name}.png", f"{seed_name}_mask.png", f"{seed_name}_target.png"))


def test_two_separate_objects_in_one_call_equal_two_single_calls(setup, rng):
    method, params, frozen, _, _ = setup
    p = randomised(params, 3)
    background = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8)
    a, b = _object(rng, (30, 30), seed_name="a"), _object(rng, (160, 160), seed_name="b")
    together = inference.compose(method, p, frozen, background, [a, b], seed=7, num_steps=2)
    assert together.rounds == [[0, 1]]  # one batched call
    first = inference.compose(method, p, frozen, background, [a], seed=7, num_steps=2)
    second = inference.compose(method, p, frozen, first.image, [b], seed=8, num_steps=2)
    for batched, single in ((together.generated[0], first.generated[0]), (together.generated[1], second.generated[0]),
                            (together.image, second.image)):
        diff = np.abs(batched.astype(int) - single.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert np.abs(together.image.astype(int) - background.astype(int)).sum() > 0
    picture = inference.side_by_side(background, [a, b], together, height=128)
    assert picture.shape[0] == 128 and picture.dtype == np.uint8
    assert picture.shape[1] == 2 * 128 + 128 + 2 * 128 + 128  # references, background, collages, result


def test_overlapping_objects_go_one_after_another(setup, rng):
    method = setup[0]
    background = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8)
    objects = [_object(rng, c) for c in ((30, 30), (40, 44), (160, 160))]
    transform = inference.inference_transform(method)
    examples = [inference.prepare_example(transform, o, background, 7 + i) for i, o in enumerate(objects)]
    assert inference.plan_rounds(examples, "crop", 5) == [[0, 2], [1]]
    # the same seed gives the same crop whatever the background pixels are
    again = inference.prepare_example(transform, objects[1], background[::-1].copy(), 8)
    np.testing.assert_array_equal(again["crop_box"], examples[1]["crop_box"])


def test_overlapping_objects_build_on_the_earlier_rounds(setup, rng):
    """Two objects whose crops overlap: the second is generated in a later round from the background with
    the first already pasted (its collage is cut from that image), so the result equals composing them one
    after another (random non-zero weights: the collage reaches the output)."""
    method, params, frozen, _, _ = setup
    p = randomised(params, 3)
    background = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8)
    a, b = _object(rng, (30, 30), seed_name="a"), _object(rng, (40, 44), seed_name="b")
    together = inference.compose(method, p, frozen, background, [a, b], seed=7, num_steps=2)
    assert together.rounds == [[0], [1]]
    first = inference.compose(method, p, frozen, background, [a], seed=7, num_steps=2)
    second = inference.compose(method, p, frozen, first.image, [b], seed=8, num_steps=2)
    for batched, single in ((together.generated[1], second.generated[0]), (together.image, second.image)):
        diff = np.abs(batched.astype(int) - single.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    transform = inference.inference_transform(method)
    on_first = inference.prepare_example(transform, b, first.image, 8)["collage"]
    on_background = inference.prepare_example(transform, b, background, 8)["collage"]
    assert np.abs(together.examples[1]["collage"] - on_first).max() <= 1 / 127.5
    assert np.abs(together.examples[1]["collage"] - on_background).max() > 0.5  # the first object is in it
    assert np.abs(together.image.astype(int) - second.image.astype(int)).max() <= 1


def test_shape_control_uses_the_target_mask_as_the_mask_channel(setup, rng):
    config = setup[0].config.copy_and_resolve_references()
    config.sample.collage_mask = "training"  # the demo's, where shape control comes from
    method = anydoor.AnyDoorMethod(config)
    background = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8)
    obj = _object(rng, (96, 96))
    box = inference.prepare_example(inference.inference_transform(method), obj, background, 1)
    shape = inference.prepare_example(inference.inference_transform(method, shape_control=True), obj, background, 1)
    np.testing.assert_array_equal(box["crop_box"], shape["crop_box"])
    np.testing.assert_array_equal(box["collage"][..., :3], shape["collage"][..., :3])
    import cv2

    y0, y1, x0, x1 = shape["crop_box"]
    crop = obj.target_mask[y0:y1, x0:x1]
    d = abs(crop.shape[0] - crop.shape[1])  # released pad_to_square: centred, mask padding marked 2 -> -1
    pad = ((d // 2, d - d // 2), (0, 0)) if crop.shape[0] < crop.shape[1] else ((0, 0), (d // 2, d - d // 2))
    expected = cv2.resize(np.pad(crop, pad, constant_values=2), (64, 64), interpolation=cv2.INTER_NEAREST)
    expected = np.where(expected == 2, -1.0, expected).astype(np.float32)
    np.testing.assert_array_equal(shape["collage"][..., 3], expected)
    assert (box["collage"][..., 3] > 0).sum() > (shape["collage"][..., 3] > 0).sum()  # the box is larger


def _released_square(values, pad):
    """run_inference.py's pad_to_square: the shorter axis padded, int(d / 2) before, the rest after."""
    h, w = values.shape[:2]
    d = abs(h - w)
    spec = [(0, 0), (d // 2, d - d // 2)] if h > w else [(d // 2, d - d // 2), (0, 0)]
    return np.pad(values, spec + [(0, 0)] * (values.ndim - 2), constant_values=pad)


def test_collage_mask_is_run_inference_s_by_default(setup, rng):
    """run_inference.py builds the mask channel as a float box in the crop, pads it to a square with -1, casts
    to uint8 (-1 wraps to 255), resizes bilinearly and keeps > 0.5: the square padding is 1 there (-1 in
    training, the demo and predict.py: `sample.collage_mask = "training"`)."""
    import cv2

    method = setup[0]
    background = rng.integers(0, 255, (192, 160, 3)).astype(np.uint8)
    obj = _object(rng, (96, 60), background.shape[:2])
    ex = inference.prepare_example(inference.inference_transform(method), obj, background, 3)
    y0, y1, x0, x1 = (int(v) for v in ex["crop_box"])
    ty0, ty1, tx0, tx1 = (int(v) for v in ex["target_box"])
    box = np.zeros((y1 - y0, x1 - x0, 3))
    box[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = 1.0
    assert ex["sizes"][0] != ex["sizes"][1]  # a crop cut by the image border: there is square padding
    square = _released_square(box, -1).astype(np.uint8)
    expected = (cv2.resize(square, (64, 64)).astype(np.float32) > 0.5).astype(np.float32)[..., 0]
    np.testing.assert_array_equal(ex["collage"][..., 3], expected)
    assert (ex["collage"][..., 3] == 1).sum() > (ex["collage"][..., 3] == 1)[16:48, 16:48].sum()  # padding is 1

    training = method.config.copy_and_resolve_references()
    training.sample.collage_mask = "training"
    other = inference.prepare_example(inference.inference_transform(anydoor.AnyDoorMethod(training)), obj,
                                      background, 3)
    square = _released_square(box[..., 0], 2).astype(np.uint8)
    expected = cv2.resize(square, (64, 64), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    np.testing.assert_array_equal(other["collage"][..., 3], np.where(expected == 2, -1.0, expected))
    np.testing.assert_array_equal(other["collage"][..., :3], ex["collage"][..., :3])


def test_paper_variant_zooms_2x_and_trains_box_only(setup, rng):
    """configs/anydoor.py:paper at the tiny sizes: every inference crop is the 1.1x target box grown 2.0x
    (squared) whatever the seed, where the released settings draw 1.5-2.9; its training mask channel is
    always the box (box_mask_prob 1.0; released 0.3: mostly a perturbed object mask)."""
    method = setup[0]
    paper = method.config.copy_and_resolve_references()
    paper_values = get_config("paper")
    paper.sample.crop_expand_tenths = paper_values.sample.crop_expand_tenths
    paper.data.box_mask_prob = paper_values.data.box_mask_prob
    paper_method = anydoor.AnyDoorMethod(paper)
    background = rng.integers(0, 255, (160, 160, 3)).astype(np.uint8)
    obj = _object(rng, (80, 80), background.shape[:2])
    sides = {name: set() for name in ("paper", "released")}
    for seed in range(6):
        for name, m in (("paper", paper_method), ("released", method)):
            ex = inference.prepare_example(inference.inference_transform(m), obj, background, seed)
            ty0, ty1, tx0, tx1 = (int(v) for v in ex["target_box"])
            y0, y1, x0, x1 = (int(v) for v in ex["crop_box"])
            assert abs((y1 - y0) - (x1 - x0)) <= 1  # squared (box2squre halves the side), inside the image
            sides[name].add(round(max(y1 - y0, x1 - x0) / max(ty1 - ty0, tx1 - tx0), 2))
    assert len(sides["paper"]) == 1 and abs(sides["paper"].pop() - 2.0) < 0.05
    assert len(sides["released"]) > 1 and all(1.45 < r < 2.95 for r in sides["released"])

    record = {"reference_image": obj.reference, "reference_mask": obj.reference_mask, "target_image": background,
              "target_mask": obj.target_mask, "dynamic": True, "source": "mem://pair"}
    box_share = {}
    for name, m in (("paper", paper_method), ("released", method)):
        transform, draws = m.make_transform(), np.random.default_rng(0)
        masks = [transform(record, draws)["collage"][..., 3] for _ in range(20)]
        box_share[name] = np.mean([np.array_equal(k > 0.5, _box_of(k > 0.5)) for k in masks])
    assert box_share["paper"] == 1.0 and box_share["released"] < 0.8


def _box_of(mask):
    """The filled bounding box of a boolean mask."""
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    return out


def test_paste_drops_the_first_generated_row_as_released(setup, rng):
    """crop_back in every released inference script gets `pred[1:]`: the square without its first row,
    stretched back to the crop (a 1/512 shift); `sample.drop_first_row = False` keeps it."""
    import cv2

    method = setup[0]
    background = rng.integers(0, 255, (192, 160, 3)).astype(np.uint8)
    ex = inference.prepare_example(inference.inference_transform(method), _object(rng, (96, 60), (192, 160)),
                                   background, 3)
    generated = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    h1, w1, h2, w2 = (int(v) for v in ex["sizes"])
    y0, y1, x0, x1 = (int(v) for v in ex["crop_box"])
    pred = cv2.resize(generated[1:].astype(np.float32), (w2, h2))  # released: float, truncated when stored
    top, left = (h2 - h1) // 2, (w2 - w1) // 2
    want = background.copy()
    want[y0 + 5:y1 - 5, x0 + 5:x1 - 5] = pred[top:top + h1, left:left + w1][5:-5, 5:-5]
    got = inference.paste(generated, background, ex, "crop", 5, drop_first_row=method.config.sample.drop_first_row)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, diff.max()  # uint8 vs float bilinear rounding
    kept = inference.paste(generated, background, ex, "crop", 5, drop_first_row=False)
    assert np.abs(kept.astype(int) - want.astype(int)).max() > 30


# ----------------------------------------------------------------------------------- bad input


def _write(path, array):
    import cv2

    cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("mask_size", r"reference mask .*ref_mask.png is 40x50 \(WxH\) but reference .*ref.png is 80x80"),
    ("mask_empty", r"reference mask .*ref_mask.png: empty"),
    ("too_small", r"ref_mask.png: the object covers 0.\d+% .*released training filters"),
    ("target_size", r"target mask .*target.png is 100x100 \(WxH\) but the background .*bg.png is 192x192"),
    ("target_empty", r"target mask .*target.png: empty"),
])
def test_bad_inputs_are_named(setup, tmp_path, rng, case, message):
    method, params, frozen, _, _ = setup
    obj = _object(rng, (96, 96))
    ref_mask, target = obj.reference_mask * 255, obj.target_mask * 255
    if case == "mask_size":
        ref_mask = ref_mask[:50, :40]
    elif case == "mask_empty":
        ref_mask = ref_mask * 0
    elif case == "too_small":
        ref_mask = _disc((80, 80), (40, 40), 3) * 255
    elif case == "target_size":
        target = target[:100, :100]
    elif case == "target_empty":
        target = target * 0
    files = [_write(tmp_path / "ref.png", obj.reference), _write(tmp_path / "ref_mask.png", ref_mask),
             _write(tmp_path / "target.png", target)]
    background = inference.read_rgb(_write(tmp_path / "bg.png", rng.integers(0, 255, (192, 192, 3)).astype(np.uint8)))
    objects = inference.read_objects([files[0]], [files[1]], [files[2]])
    with pytest.raises(inference.AnyDoorInputError, match=message) as err:
        inference.compose(method, params, frozen, background, objects, background_name=f"background {tmp_path}/bg.png")
    assert cli.is_input_error(err.value)


def test_unreadable_files_and_counts_are_named(tmp_path):
    with pytest.raises(inference.AnyDoorInputError, match=r"--reference .*nothing.png: no such file"):
        inference.read_objects([str(tmp_path / "nothing.png")], None, [str(tmp_path / "m.png")])
    with pytest.raises(inference.AnyDoorInputError, match="2 --reference, 0 --reference-mask and 1 --mask"):
        inference.read_objects(["a.png", "b.png"], None, ["m.png"])
    rgb = _write(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(inference.AnyDoorInputError, match="no alpha channel"):
        inference.read_objects([rgb], None, [rgb])


