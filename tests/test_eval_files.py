"""What `evaluate` does to real files: formats accepted or refused with counts, EXIF orientation, 16-bit
images, alpha, mixed sizes at native size, every resize recorded, labelled examples, provenance.

SSIM-only evaluations need no network, so each of these runs in a second or two; references are scikit-image,
Pillow's own `ImageOps.exif_transpose` and numpy on the arrays written.
"""

import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from configs.eval.base import base_config
from jcompose import evaluate, image_files
from jcompose.cli import InputError
from jcompose.eval_inputs import pair_shape


def _photo(h=60, w=80, seed=0):
    """A smooth, photo-like 8-bit image (gradients and blobs; SSIM windows see structure, not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    image = np.stack([np.sin(6 * yy + c) * 60 + 120 + 50 * xx for c in rng.uniform(0, 3, 3)], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3) * [h, w, min(h, w) / 3]
        image[(np.mgrid[:h, :w][0] - cy) ** 2 + (np.mgrid[:h, :w][1] - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def _ssim_skimage(a, b):
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                                 channel_axis=-1)


def _config(gen, ref, out, **fields):
    c = base_config()
    c.metrics, c.pair_size, c.batch_size, c.workers = ("ssim",), 0, 4, 2
    c.generated, c.reference, c.out = str(gen), str(ref), str(out)
    for key, value in fields.items():
        c[key] = value
    return c


def test_every_format_is_accepted_or_refused_with_a_count(tmp_path, capsys):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for i, suffix in enumerate((".png", ".tif", ".tiff", ".bmp", ".webp")):
        image = Image.fromarray(_photo(seed=i))
        image.save(gen / f"x{i}{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
        image.save(ref / f"x{i}.png")
    Image.fromarray(_photo()).save(gen / "animated.gif")
    (gen / "notes.txt").write_text("not an image")
    (gen / ".DS_Store").write_bytes(b"\0")
    (gen / "sub").mkdir()
    scores = evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    assert scores["n_generated"] == 5  # .tif and .tiff included
    np.testing.assert_allclose(scores["per_image"]["ssim"], 1.0, atol=1e-6)  # every format decoded losslessly
    summary = scores["inputs"]["generated"]
    assert summary["formats"] == {"BMP": 1, "PNG": 1, "TIFF": 2, "WEBP": 1}
    skipped = summary["skipped"]
    assert skipped["GIF (256 colours, possibly animated): convert to PNG"]["count"] == 1
    assert skipped["not an image file (.txt)"] == {"count": 1, "examples": ["notes.txt"]}
    assert skipped["hidden file"]["count"] == 1 and skipped["folder (folders are not searched)"]["count"] == 1
    report = (tmp_path / "out" / "report.html").read_text()
    assert "notes.txt" in report and "GIF" in report
    warning = capsys.readouterr().err
    assert "warning: config.generated" in warning and "1 GIF" in warning and "1 not an image file (.txt)" in warning


def test_exif_orientation_is_honoured(tmp_path):
    """Every EXIF orientation reads as Pillow's exif_transpose does; a sideways-stored photo tagged
    'rotate 90' scores 1 against its upright copy."""
    upright = _photo(48, 72)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(upright).save(path, exif=exif)
        with Image.open(path) as image:
            want = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        info = image_files.inspect(path)
        np.testing.assert_array_equal(image_files.read_image(path), want)
        assert info.shape == want.shape[:2] and ("exif_orientation" in info.conversions) == (orientation != 1)
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise; shown rotated back
    Image.fromarray(np.rot90(upright, 1).copy()).save(gen / "phone.jpg", exif=exif, quality=100, subsampling=0)
    Image.fromarray(upright).save(ref / "phone.png")
    scores = evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    assert scores["per_image"]["ssim"][0] > 0.99  # sideways it would be compared with a stretched copy
    assert scores["inputs"]["generated"]["conversions"]["exif_orientation"]["count"] == 1


def test_16_bit_images_are_read_at_full_depth(tmp_path):
    """16-bit grey and colour PNG / TIFF read as round(v / 257) of the values written, not clipped to white."""
    rng = np.random.default_rng(1)
    smooth = _photo(40, 56).astype(np.uint32) * 257 + rng.integers(0, 257, (40, 56, 3))  # 16-bit, all bits used
    deep = smooth.astype(np.uint16)
    want = ((deep.astype(np.float64) / 257) + 0.5).astype(np.uint8)
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    cv2.imwrite(str(gen / "grey.png"), deep[..., 0])
    cv2.imwrite(str(gen / "colour.png"), deep[..., ::-1])
    cv2.imwrite(str(gen / "colour_tif.tif"), deep[..., ::-1])
    for path, expected in ((gen / "grey.png", np.repeat(want[..., :1], 3, -1)), (gen / "colour.png", want),
                           (gen / "colour_tif.tif", want)):
        assert image_files.inspect(path).bits == 16
        np.testing.assert_array_equal(image_files.read_image(path), expected, err_msg=path.name)
        Image.fromarray(expected).save(ref / f"{path.stem}.png")
    scores = evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    np.testing.assert_allclose(scores["per_image"]["ssim"], 1.0, atol=1e-6)
    assert scores["inputs"]["generated"]["conversions"]["16bit_to_8bit"]["count"] == 3


def test_alpha_is_dropped_with_a_note(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    rgb = _photo()
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[10:30] = 255
    Image.fromarray(np.dstack([rgb, alpha])).save(gen / "cutout.png")
    Image.fromarray(rgb).save(ref / "cutout.png")
    scores = evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    assert scores["per_image"]["ssim"][0] == pytest.approx(1.0, abs=1e-6)  # RGB as stored, not composited
    note = scores["inputs"]["generated"]["conversions"]["alpha_dropped"]
    assert note["count"] == 1 and "not composited" in note["what"]


def test_native_size_on_mixed_sizes_batches_by_size(tmp_path):
    """pair_size 0 with batch size 4 on images of three sizes: each scored at its own size, as scikit-image."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    sizes = [(40, 52), (33, 47), (40, 52), (60, 30), (33, 47)]
    want = []
    for i, (h, w) in enumerate(sizes):
        image = _photo(h, w, seed=i)
        shifted = np.clip(image.astype(np.int16) + 9 * (i + 1), 0, 255).astype(np.uint8)
        Image.fromarray(shifted).save(gen / f"{i}.png")
        Image.fromarray(image).save(ref / f"{i}.png")
        want.append(_ssim_skimage(shifted, image))
    scores = evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    np.testing.assert_allclose(scores["per_image"]["ssim"], want, atol=2e-5)
    record = scores["preprocessing"]["lpips_ssim"]
    assert record["distinct_sizes"] == 3 and record["generated_resized"] == 0 and "native size" in record["rule"]


def test_resizes_are_recorded_and_keep_aspect_is_offered(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for i, (h, w) in enumerate([(60, 80), (40, 40)]):
        Image.fromarray(_photo(h, w, seed=i)).save(gen / f"{i}.png")
        Image.fromarray(_photo(h, w, seed=i + 5)).save(ref / f"{i}.png")
    stretched = evaluate.evaluate(_config(gen, ref, tmp_path / "a", pair_size=32), progress=False)
    record = stretched["preprocessing"]["lpips_ssim"]
    assert "stretched to 32x32, aspect ratio not kept" in record["rule"]
    assert record["generated_resized"] == 2 and record["generated_aspect_changed"] == 1
    kept = evaluate.evaluate(_config(gen, ref, tmp_path / "b", pair_size=32, pair_resize="keep_aspect"),
                             progress=False)
    assert kept["preprocessing"]["lpips_ssim"]["generated_aspect_changed"] == 0
    # at 32 x 43 (aspect kept), image 0's SSIM is scikit-image's on both resized that way (PIL bicubic)
    a, b = (np.asarray(Image.open(d / "0.png").resize((43, 32), Image.BICUBIC)) for d in (gen, ref))
    assert pair_shape((60, 80), 32, "keep_aspect") == (32, 43)
    assert kept["per_image"]["ssim"][0] == pytest.approx(_ssim_skimage(a, b), abs=2e-5)
    assert kept["per_image"]["ssim"][0] != pytest.approx(stretched["per_image"]["ssim"][0], abs=1e-3)
    with pytest.raises(InputError, match="config.pair_resize = 'crop'"):
        evaluate.evaluate(_config(gen, ref, tmp_path / "c", pair_resize="crop"), progress=False)
    html = (tmp_path / "a" / "report.html").read_text()
    assert "aspect ratio not kept" in html


def test_examples_are_labelled_with_names_and_scores(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    for i in range(3):
        Image.fromarray(_photo(seed=i)).save(gen / f"scene_{i}.png")
        Image.fromarray(_photo(seed=i + 10)).save(ref / f"scene_{i}.png")
    c = _config(gen, ref, tmp_path / "out")
    c.report.thumb = 64
    scores = evaluate.evaluate(c, progress=False)
    html = (tmp_path / "out" / "report.html").read_text()
    for i, value in enumerate(scores["per_image"]["ssim"]):
        assert f"scene_{i}.png" in html and f"ssim {value:.3f}" in html
    grid = np.asarray(Image.open(tmp_path / "out" / "examples.png").convert("L"))
    cell = grid.shape[0] // 3
    assert grid.shape[1] == 2 * 64 and cell > 64  # a caption strip under each row of thumbnails
    captions = grid[64:cell, 64:]  # under the generated thumbnail of row 0: its name and score, drawn
    assert (captions < 128).sum() > 30


def test_provenance_names_eval_config_checkpoint_and_training_variant(tmp_path):
    from configs import common
    from jcompose import run_record

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    Image.fromarray(_photo()).save(gen / "0.png")
    Image.fromarray(_photo()).save(ref / "0.png")
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "40").mkdir(parents=True)
    train_config = common.load("configs/dreamcom.py:tiny")
    run_record.record(train_config, workdir, resuming=False,
                      argv=["jcompose.train", "--config=configs/dreamcom.py:tiny", f"--workdir={workdir}"])
    c = _config(gen, ref, tmp_path / "out")
    c.eval_config, c.method, c.run = "configs/eval/dreamcom.py", "dreamcom", str(workdir / "checkpoints" / "40")
    scores = evaluate.evaluate(c, progress=False)
    prov = scores["provenance"]
    assert prov["checkpoint"] == {"run": str(workdir), "step": 40}
    assert prov["training_config"] == "configs/dreamcom.py:tiny" and prov["training_config_variant"] == "tiny"
    assert prov["protocol"] == "folders"
    assert prov["eval_config"] == "configs/eval/dreamcom.py"
    stored = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert stored["provenance"] == prov
    assert "configs/dreamcom.py:tiny" in (tmp_path / "out" / "report.html").read_text()


def test_unusable_files_are_named_before_any_work(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    Image.fromarray(_photo()).save(ref / "0.png")
    frames = [Image.fromarray(_photo(seed=s)) for s in range(2)]
    frames[0].save(gen / "0.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match=r"0.tif: 2 frames"):
        evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    (gen / "0.tif").unlink()
    (gen / "0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"0.png: unreadable image"):
        evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
    Image.fromarray(np.zeros((8, 40), np.float32), mode="F").save(gen / "0.tif")
    (gen / "0.png").unlink()
    with pytest.raises(InputError, match=r"pixel mode 'F'"):
        evaluate.evaluate(_config(gen, ref, tmp_path / "out"), progress=False)
