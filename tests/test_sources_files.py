"""Dataset files as users have them: the TFDS directory source, the synthetic writer's command line,
damaged image and annotation files (every decode failure a RecordError, bad COCO images skipped and
counted), and the drops a reader must not make silently.
"""

import json
import pickle
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from input_pipeline.records import RecordError
from input_pipeline.sources import coco, synthetic, video


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.write_synthetic(root, num_images=6, num_videos=3, num_frames=6, image_size=(96, 128), seed=3)


# -------------------------------------------------------------------------------------------------- TFDS

def test_tfds_directory_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from input_pipeline.sources.tfds import TfdsSource

    images = [np.random.default_rng(i).integers(0, 255, (8, 10, 3), dtype=np.uint8) for i in range(3)]

    class Tiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)), "caption": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, image in enumerate(images):  # encoded bytes: no TensorFlow needed to write
                yield i, {"image": cv2.imencode(".png", image[..., ::-1])[1].tobytes(), "caption": f"photo {i}"}

    builder = Tiny(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    source = TfdsSource(builder.data_dir, "train")
    assert len(source) == 3
    seen = {}
    for i in range(3):
        example = source[i]
        seen[example["caption"]] = example["image"]
    for i, image in enumerate(images):
        np.testing.assert_array_equal(seen[f"photo {i}"], image)
    clone = pickle.loads(pickle.dumps(source))  # as grain workers receive it
    to_reference = TfdsSource(builder.data_dir, "train", to_record=lambda e: {"n": len(e["caption"])})
    assert clone[0]["caption"] == source[0]["caption"] and to_reference[0]["n"] == 7
    with pytest.raises(RecordError, match=r"split 'test' not found; the dataset has \['train'\]"):
        TfdsSource(builder.data_dir, "test")
    with pytest.raises(RecordError, match="not a prepared TFDS dataset directory"):
        TfdsSource(tmp_path, "train")


def test_synthetic_cli_writes_both_layouts(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path), "--num_images", "2", "--num_videos", "1", "--num_frames", "3",
                    "--height", "48", "--width", "64"])
    assert "wrote 2 images" in capsys.readouterr().out
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["coco/annotations/captions.json", "coco/annotations/instances.json", "coco/images/000000.jpg",
                     "coco/images/000001.jpg", "youtube_vos/Annotations/video000/00000.png",
                     "youtube_vos/Annotations/video000/00001.png", "youtube_vos/Annotations/video000/00002.png",
                     "youtube_vos/JPEGImages/video000/00000.jpg", "youtube_vos/JPEGImages/video000/00001.jpg",
                     "youtube_vos/JPEGImages/video000/00002.jpg", "youtube_vos/meta.json"]
    with Image.open(tmp_path / "youtube_vos/Annotations/video000/00002.png") as png:
        assert png.mode == "P" and set(np.unique(np.array(png))) == {0, 1, 2}  # both objects by frame 2
    with pytest.raises(ValueError, match=r"image_size = \(16, 16\): expected \(height, width\) with both >= 32"):
        synthetic.write_synthetic(tmp_path / "small", image_size=(16, 16))


def test_synthetic_writer_without_videos(tmp_path):
    truth = synthetic.write_synthetic(tmp_path, num_images=2, num_videos=0)
    assert len(truth.images) == 2 and not truth.videos
    assert json.loads((tmp_path / "youtube_vos" / "meta.json").read_text()) == {"videos": {}}


# ------------------------------------------------------------------------------- damaged image files

@pytest.fixture
def damaged_images(syn, tmp_path):
    """A zero-byte, a truncated JPEG, a truncated PNG and a text file named .jpg, next to good ones."""
    jpeg = open(syn.images[0]["file"], "rb").read()
    png = open(syn.videos["video000"]["annotations"][0], "rb").read()
    files = {"zero.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) * 6 // 10], "truncated_eoi.jpg": jpeg[:-2],
             "truncated.png": png[: len(png) // 2], "zero.png": b"", "text.jpg": b"hello"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("name", ["zero.jpg", "truncated.jpg", "truncated_eoi.jpg", "truncated.png", "text.jpg"])
def test_every_image_decode_failure_is_a_record_error(damaged_images, name):
    from input_pipeline.records import read_image

    with pytest.raises(RecordError, match=rf"{name}: ") as err:
        read_image(damaged_images / name)
    assert err.value.path == str(damaged_images / name)


@pytest.mark.parametrize("name", ["zero.png", "truncated.png"])
def test_damaged_annotation_pngs_are_record_errors(damaged_images, name):
    from input_pipeline.records import read_binary_mask, read_label_png

    for reader in (read_label_png, read_binary_mask):
        with pytest.raises(RecordError, match=rf"{name}: not a readable"):
            reader(damaged_images / name)


def test_damaged_coco_images_are_skipped_and_counted(syn, tmp_path):
    from input_pipeline.pipeline import make_iterator

    shutil.copytree(syn.coco_dir, tmp_path / "coco")
    images = sorted((tmp_path / "coco" / "images").glob("*.jpg"))
    images[0].write_bytes(b"")  # zero bytes
    images[1].write_bytes(images[1].read_bytes()[:500])  # truncated
    source = coco.CocoSource(tmp_path / "coco" / "images", tmp_path / "coco" / "annotations" / "instances.json")
    it = make_iterator(source, lambda r: {"h": np.int64(r["image"].shape[0])}, per_process_batch=2, seed=0)
    batches = [next(it) for _ in range(6)]  # two epochs of the 4 good images
    assert all((b["h"] == 96).all() for b in batches)
    assert it.skipped.count == 4  # both bad images, in each of the two epochs


# ------------------------------------------------------------------------------------------ silent drops

def test_video_folder_without_annotations_warns_once_or_fails_strictly(syn, tmp_path, caplog):
    import logging

    shutil.copytree(syn.youtube_vos_dir, tmp_path / "ds")
    for name in ("video000", "video001"):
        shutil.rmtree(tmp_path / "ds" / "Annotations" / name)
    with caplog.at_level(logging.WARNING):
        source = video.VideoSource(tmp_path / "ds", use_meta=False)
    assert len(source) == 2  # the one video left, 2 objects
    # (records of this logger only: an earlier test's prefetch threads may still be logging)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == video.__name__]
    assert len(warnings) == 1 and "2 of 3 videos" in warnings[0] and "video000" in warnings[0], warnings
    with pytest.raises(RecordError, match=r"Annotations/video000: no annotation PNGs for the 6 frames"):
        video.VideoSource(tmp_path / "ds", strict=True)
