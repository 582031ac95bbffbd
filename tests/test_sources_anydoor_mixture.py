"""AnyDoor's released training mixture over every dataset (fixtures in tests/anydoor_source_writers.py): the
clips' frame order, the released weights table, the sources' frequencies against the released weights within
4 binomial sigma, missing roots left out with the weights renormalised.
"""

import json
import os

import numpy as np
import pytest
from anydoor_source_writers import (
    write_fashiontryon,
    write_image_sets,
    write_mvimgnet,
    write_uvo,
    write_vipseg,
    write_vitonhd,
    write_youtube_vos,
)

from input_pipeline import anydoor_mixture as mixture
from input_pipeline import pipeline
from input_pipeline.records import RecordError

# ------------------------------------------------------------------------------------------------ mixture

# reference/anydoor.md 3.2, typed out here: (released __len__, dynamic, check_region_size variant)
RELEASED = {"saliency": (20000, 0, "any"), "sam": (20000, 0, "any"), "lvis": (20000, 0, "any"),
            "ytb_vos": (40000, 1, "both"), "vipseg": (30000, 1, "any"), "ytb_vis": (40000, 1, "both"),
            "uvo": (25000, 1, "both"), "uvo_val": (8000, 1, "both"), "mose": (40000, 2, "any"),
            "vitonhd": (20000, 2, "both"), "fashiontryon": (5000, 2, "both"), "mvimgnet": (40000, 2, "both")}
IMAGE_SETS = ("saliency", "sam", "lvis")




@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("anydoor_data")
    frames, train_json = write_uvo(root / "uvo")
    _, val_json = write_uvo(root / "uvo", "UVO_sparse_val_video.json")
    write_vipseg(root / "vipseg")
    write_fashiontryon(root / "fashion")
    return {**write_image_sets(root), "ytb_vos": str(write_youtube_vos(root / "ytb_vos")),
            "ytb_vis": str(write_youtube_vos(root / "ytb_vis")), "mose": str(write_youtube_vos(root / "mose", False)),
            "vipseg": str(root / "vipseg"), "uvo_frames": str(frames), "uvo_json": str(train_json),
            "uvo_val_json": str(val_json), "vitonhd": str(write_vitonhd(root / "viton")),
            "fashiontryon": str(root / "fashion"), "mvimgnet": str(write_mvimgnet(root / "mv"))}


def test_clip_frame_order_is_the_released_directory_order_or_sorted(roots, tmp_path):
    """The min-gap pairing counts in the clip's frame order. frame_order="released": the released loaders'
    order, os.listdir's for MOSE, VIPSeg and MVImgNet (ext4: a hash order, not time) and meta.json's for
    YouTube-VOS; "sorted": by name. The oracle is os.listdir itself and a meta.json listed backwards."""
    def names(paths):
        return [os.path.basename(p) for p in paths]

    def listed(folder, suffix, keep):
        return [n for n in os.listdir(folder) if n.endswith(suffix) and n in keep]

    ytb = write_youtube_vos(tmp_path / "ytb")
    meta = json.loads((ytb / "meta.json").read_text())
    for obj in meta["videos"]["vid0"]["objects"].values():
        obj["frames"] = obj["frames"][::-1]
    (ytb / "meta.json").write_text(json.dumps(meta))
    built = {}
    for order in ("released", "sorted"):
        components = mixture.anydoor_components({**roots, "ytb_vos": str(ytb)}, frame_order=order)
        built[order] = {name: source for name, source, _, _ in components}
    for name, key, suffix in (("mose", "frame_paths", ".jpg"), ("vipseg", "frame_paths", ".jpg"),
                              ("mvimgnet", "mask_paths", ".png")):
        for k in range(len(built["released"][name])):
            released, by_name = (names(built[order][name][k][key]) for order in ("released", "sorted"))
            folder = os.path.dirname(built["released"][name][k][key][0])
            assert released == listed(folder, suffix, released), (name, k)
            assert by_name == sorted(released), (name, k)
    for k in range(len(built["released"]["ytb_vos"])):
        released, by_name = (names(built[order]["ytb_vos"][k]["frame_paths"]) for order in ("released", "sorted"))
        assert released == sorted(released, reverse=True) and by_name == sorted(released)
    with pytest.raises(ValueError, match="frame_order"):
        mixture.anydoor_components(roots, frame_order="shuffled")


def test_released_weights_table():
    assert mixture.RELEASED_WEIGHTS == {name: length * (1 if name in IMAGE_SETS else 2)
                                        for name, (length, _, _) in RELEASED.items()}
    total = sum(mixture.RELEASED_WEIGHTS.values())
    assert total == 556000
    share = lambda names: round(100 * sum(mixture.RELEASED_WEIGHTS[n] for n in names) / total, 1)
    assert [share(g) for g in (IMAGE_SETS, ("ytb_vos", "vipseg", "ytb_vis", "uvo", "uvo_val", "mose"),
                               ("vitonhd", "fashiontryon"), ("mvimgnet",))] == [10.8, 65.8, 9.0, 14.4]
    assert [share([n for n, v in RELEASED.items() if v[1] == d]) for d in (0, 1, 2)] == [10.8, 51.4, 37.8]


def _draw(mix, n):
    counts = dict.fromkeys(RELEASED, 0)
    for i in range(n):
        pair = mix[i]
        name = pair["dataset"]
        counts[name] += 1
        length, dynamic, rule = RELEASED[name]
        assert pair["dynamic"] == dynamic and pair["region_rule"] == rule, name
        assert pair["max_target_region"] == (1.0 if name in ("vitonhd", "fashiontryon") else 0.8)
        for role in ("reference", "target"):
            image, mask = pair[f"{role}_image"], pair[f"{role}_mask"]
            assert image.dtype == np.uint8 and image.shape[:2] == mask.shape and mask.any() and mask.max() == 1
        if name in IMAGE_SETS:
            assert pair["reference_image"] is pair["target_image"]  # released: ref = tar for image sets
    return counts


def _assert_shares(counts, weights, n):
    total = sum(weights.values())
    for name, count in counts.items():
        p = weights.get(name, 0) / total
        assert abs(count - n * p) <= 4 * np.sqrt(n * p * (1 - p)), (name, count, n * p)


class _Repeated:
    """A source read `times` over: grain's index shuffle costs ~50/n ms per element on an n-record source,
    so the fixture's 1-3 record sources are lengthened to draw thousands of elements quickly."""

    def __init__(self, source, times):
        self.source, self.times = source, times

    def __len__(self):
        return len(self.source) * self.times

    def __getitem__(self, index):
        return self.source[index % len(self.source)]


def _lengthened(components):
    return pipeline.mix_sources([(_Repeated(s, 400), w, prepare) for _, s, w, prepare in components], seed=3)


RELEASED_SHARES = {name: v[0] * (1 if name in IMAGE_SETS else 2) for name, v in RELEASED.items()}


def test_released_mixture_frequencies_and_labels(roots, capsys):
    n = 278
    counts = _draw(mixture.released_mixture(roots, seed=0), n)
    line = capsys.readouterr().out.strip()
    assert line.startswith("AnyDoor mixture: saliency 3.6% (dynamic 0, 3 records), sam 3.6% (dynamic 0, 1 records)")
    assert "mvimgnet 14.4% (dynamic 2, 2 records)" in line and "left out" not in line
    _assert_shares(counts, RELEASED_SHARES, n)
    assert min(counts.values()) > 0
    # the same components over many more draws (sources lengthened), for a tight band: 4 sigma of 2780
    # draws is 1.4% (absolute) for the 3.6% sets, 2.7% for the 14.4% ones
    _assert_shares(_draw(_lengthened(mixture.anydoor_components(roots)), 2780), RELEASED_SHARES, 2780)


def test_mixture_leaves_out_missing_roots_and_renormalises(roots, capsys):
    kept = {k: v for k, v in roots.items() if k not in ("sam", "mose", "fashiontryon", "mvimgnet", "uvo_val_json")}
    mixture.released_mixture({**kept, "mose": ""}, seed=1)
    assert capsys.readouterr().out.strip().endswith("; left out: sam, uvo_val, mose, fashiontryon, mvimgnet")
    n = 1000
    counts = _draw(_lengthened(mixture.anydoor_components({**kept, "mose": ""})), n)
    weights = {name: w for name, w in RELEASED_SHARES.items()
               if name not in ("sam", "uvo_val", "mose", "fashiontryon", "mvimgnet")}
    _assert_shares(counts, weights, n)
    assert counts["sam"] == counts["mose"] == counts["mvimgnet"] == 0
    # a weight override: 0 leaves a dataset out, others are renormalised
    components = mixture.anydoor_components(kept, {"vipseg": 0, "lvis": 60000})
    assert [c[0] for c in components] == ["saliency", "lvis", "ytb_vos", "ytb_vis", "uvo", "vitonhd"]
    assert [c[2] for c in components] == [20000, 60000, 80000, 80000, 50000, 40000]
    with pytest.raises(ValueError, match=r"unknown AnyDoor dataset key\(s\) \['vip_seg'\]"):
        mixture.anydoor_components({"vip_seg": "x"})
    with pytest.raises(ValueError, match="no AnyDoor training data"):
        mixture.anydoor_components({"uvo_frames": roots["uvo_frames"]})  # UVO needs a JSON too
    with pytest.raises(RecordError, match=r"nowhere/images: folder not found \(expected the VIPSeg_720P"):
        mixture.anydoor_components({"vipseg": "/nowhere"})
