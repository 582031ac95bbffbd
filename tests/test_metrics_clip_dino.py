"""CLIP score / CLIP-I / DINO: preprocessing vs transformers' processors, jcompose's Flax features vs
transformers PyTorch on the same tiny random weights, score conventions by hand."""

import jax
import numpy as np
import pytest

from jcompose.metrics import clip_score, dino, preprocess
from jcompose.models import encoders, tiny, vit


def _photo(h=300, w=451):
    data = pytest.importorskip("skimage.data")
    return data.chelsea()[:h, :w]


def test_clip_input_equals_clip_image_processor():
    from transformers import CLIPImageProcessor

    image = _photo()
    ref = CLIPImageProcessor()(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(preprocess.clip_input(image), ref, atol=1e-6)


def test_dino_input_is_resize_256_crop_224():
    from transformers import CLIPImageProcessor

    # 300x451 -> 256x384: crop offsets 16 and 80, where both rounding rules agree
    image = _photo()
    processor = CLIPImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                   image_mean=preprocess.IMAGENET_MEAN, image_std=preprocess.IMAGENET_STD)
    ref = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(preprocess.dino_input(image), ref, atol=1e-6)


def test_center_crop_rounding():
    # 231 - 224 = 7: torchvision's top is round(3.5) = 4, transformers' 7 // 2 = 3
    img = np.zeros((231, 224, 3), np.uint8)
    img[4] = 1
    assert preprocess.center_crop(img, 224, "torchvision")[0].max() == 1
    assert preprocess.center_crop(img, 224, "transformers")[1].max() == 1
    with pytest.raises(ValueError, match="uint8"):
        preprocess.clip_input(np.zeros((10, 10, 3), np.float32))


def test_score_conventions_by_hand():
    cos = np.array([0.3, -0.1, 0.25])
    assert clip_score.clip_score(cos) == pytest.approx(100 * 0.45 / 3)
    assert clip_score.clip_score(cos, "hessel") == pytest.approx(2.5 * 0.55 / 3)
    assert clip_score.clip_score(np.array([-0.2, 0.1])) == 0.0
    np.testing.assert_allclose(clip_score.paired_cosine([[3.0, 4.0]], [[4.0, 3.0]]), [24 / 25])
    with pytest.raises(ValueError, match="convention"):
        clip_score.clip_score(cos, "other")


def _tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "eos_token_id": 98},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=24)


def _tiny_vit(folder, pooler):
    """A tiny ViT folder written by jcompose (random weights, with or without the pooler)."""
    config = vit.ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, layer_norm_eps=1e-6)
    model = vit.ViTModel(config, add_pooling_layer=pooler)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32)))
    encoders.export_encoder(model, tiny.random_params(shapes["params"], 4), folder)
    return folder


def _features(out):
    # transformers 5 returns a ModelOutput from get_*_features (projected features in pooler_output)
    return (out if hasattr(out, "numpy") else out.pooler_output).numpy()


@pytest.mark.parity
def test_clip_features_equal_transformers_pytorch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    from transformers import CLIPModel

    # written by transformers PyTorch (as published checkpoints are), read torch-free
    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(_tiny_clip_config()).save_pretrained(folder, safe_serialization=True)
    clip = clip_score.load_clip(folder)
    pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(0, 97, size=(3, 77)).astype(np.int32)
    ids[:, 9] = 98  # EOS: pooling position
    mask = np.ones_like(ids)
    ours_img = np.asarray(clip_score.image_embeddings(clip.module, clip.params, pixels))
    ours_txt = np.asarray(clip_score.text_embeddings(clip.module, clip.params, ids, mask))
    ref = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref_img = _features(ref.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)))
        ref_txt = _features(ref.get_text_features(input_ids=torch.from_numpy(ids).long(),
                                                  attention_mask=torch.from_numpy(mask).long()))
    ref_img /= np.linalg.norm(ref_img, axis=-1, keepdims=True)
    ref_txt /= np.linalg.norm(ref_txt, axis=-1, keepdims=True)
    np.testing.assert_allclose(ours_img, ref_img, atol=1e-5)
    np.testing.assert_allclose(ours_txt, ref_txt, atol=1e-5)
    np.testing.assert_allclose(clip_score.paired_cosine(ours_img, ours_txt), (ref_img * ref_txt).sum(-1), atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("pooler", [False, True])
def test_dino_cls_equals_transformers_pytorch(tmp_path, rng, pooler):
    torch = pytest.importorskip("torch")
    from transformers import ViTModel

    folder = _tiny_vit(tmp_path / "dino", pooler)
    vit = dino.load_dino(folder)
    pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(dino.dino_embeddings(vit.module, vit.params, pixels))
    ref = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    with torch.no_grad():
        theirs = ref(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_dino_load_error_names_file(tmp_path):
    folder = _tiny_vit(tmp_path / "dino", False)
    import json

    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 48
    config["num_attention_heads"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model.safetensors"):
        dino.load_dino(folder)
