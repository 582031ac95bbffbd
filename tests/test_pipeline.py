"""grain pipeline: exact resume, shards partition each epoch, bad records skipped and counted or raised,
seeded transforms, weighted mixtures, worker processes, and the real sources end to end."""

import json
from collections import Counter

import cv2
import numpy as np
import pytest

from input_pipeline.pipeline import SKIPPED_KEY, make_iterator, mix_sources, takes_rng
from input_pipeline.records import RecordError
from input_pipeline.sources import coco, synthetic, video
from input_pipeline.sources.shapes import ShapesSource


class Numbers:
    """Records {"i": i}; indices in `bad` raise RecordError when read."""

    def __init__(self, n, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise RecordError(f"/data/{i}.jpg", "unreadable")
        return {"i": i}


def ident(record):
    return {"i": np.int64(record["i"])}


def noisy(record, rng):
    return {"i": np.int64(record["i"]), "u": np.float64(rng.random())}


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _close(*iterators):
    for iterator in iterators:
        getattr(iterator, "close", lambda: None)()


def test_resume_continues_exact_sequence():
    it = make_iterator(Numbers(13), noisy, per_process_batch=3, seed=5)
    _take(it, 2)
    state = it.get_state()
    json.dumps(state)  # the trainer's checkpoint handler writes it as JSON
    expected = _take(it, 6)  # crosses the epoch boundary (13 records, batches of 3)
    resumed = make_iterator(Numbers(13), noisy, per_process_batch=3, seed=5)
    resumed.set_state(state)
    for got, want in zip(_take(resumed, 6), expected):
        np.testing.assert_array_equal(got["i"], want["i"])
        np.testing.assert_array_equal(got["u"], want["u"])


def test_shards_partition_every_epoch():
    n, hosts = 24, 3
    streams = []
    for host in range(hosts):
        it = make_iterator(Numbers(n), ident, per_process_batch=2, seed=1, process_index=host, process_count=hosts)
        streams.append(np.concatenate([b["i"] for b in _take(it, n // hosts)]))  # two epochs per host
    for epoch in range(2):
        part = [s[epoch * (n // hosts):(epoch + 1) * (n // hosts)] for s in streams]
        assert sorted(np.concatenate(part).tolist()) == list(range(n))  # disjoint and complete
    assert not np.array_equal(streams[0][:8], streams[0][8:])  # each epoch reshuffled
    with pytest.raises(ValueError, match="process_index=3 in"):
        make_iterator(Numbers(n), ident, per_process_batch=2, seed=1, process_index=3, process_count=3)


def test_bad_records_skipped_and_counted():
    def transform(record, rng):  # a filter failure inside the transform
        if record["i"] == 4:
            raise RecordError(f"/data/{record['i']}.jpg", "mask too small")
        return noisy(record, rng)

    bad = {2, 4, 9}
    order = np.concatenate([b["i"] for b in _take(make_iterator(Numbers(12), ident, per_process_batch=1, seed=3),
                                                  24)])
    it = make_iterator(Numbers(12, bad={2, 9}), transform, per_process_batch=1, seed=3)
    got = []
    for _ in range(15):
        batch = next(it)
        assert set(batch) == {"i", "u"}  # bookkeeping key popped
        got.append(int(batch["i"][0]))
    # the same stream with the bad records left out, and as many skipped as were passed over
    good = np.array([i not in bad for i in order.tolist()])
    last = int(np.flatnonzero(np.cumsum(good) == 15)[0])  # stream position of the 15th good element
    assert got == order[:last + 1][good[:last + 1]].tolist()
    assert it.skipped.count == int((~good[:last + 1]).sum()) >= 3


def test_strict_raises_naming_the_file():
    it = make_iterator(Numbers(6, bad={0, 1, 2, 3, 4, 5}), ident, per_process_batch=2, seed=0, strict=True)
    with pytest.raises(RecordError, match=r"/data/\d\.jpg: unreadable"):
        next(it)


def test_transform_forms_and_seeding():
    assert takes_rng(noisy) and not takes_rng(ident) and takes_rng(lambda r, g: r) and not takes_rng(len)
    first = _take(make_iterator(Numbers(10), noisy, per_process_batch=5, seed=0), 2)
    again = _take(make_iterator(Numbers(10), noisy, per_process_batch=5, seed=0), 2)
    other = _take(make_iterator(Numbers(10), noisy, per_process_batch=5, seed=1), 2)
    np.testing.assert_array_equal(first[1]["u"], again[1]["u"])
    assert not np.array_equal(first[0]["u"], other[0]["u"])
    u = np.concatenate([b["u"] for b in first])
    assert len(set(u.tolist())) == 10  # each element draws its own numbers
    # the one-argument form, as the denoise method's transform
    batch = next(make_iterator(ShapesSource(4, 8), lambda r: {"image": r["image"]}, per_process_batch=2, seed=0))
    assert batch["image"].shape == (2, 8, 8, 3) and batch["image"].dtype == np.float32
    # forcing the form: a callable with two parameters used as a one-argument transform
    forced = next(make_iterator(Numbers(4), lambda record, unused=None: ident(record), per_process_batch=4, seed=0,
                                random_transform=False))
    assert sorted(forced["i"].tolist()) == [0, 1, 2, 3]


def test_mixture_weights_and_prepare():
    letters = [{"s": "a", "k": k} for k in range(10)]
    words = [{"s": "b", "k": k} for k in range(40)]

    def tag(record, rng):
        return {**record, "r": float(rng.random())}

    mix = mix_sources([(letters, 0.25, tag), (words, 0.75)], seed=0)
    elements = [mix[i] for i in range(160)]
    for window in (elements[:40], elements[40:80]):
        counts = Counter(e["s"] for e in window)
        assert abs(counts["b"] - 30) <= 1 and abs(counts["a"] - 10) <= 1  # the weights in any window
    b_stream = [e["k"] for e in elements if e["s"] == "b"]
    a_stream = [e for e in elements if e["s"] == "a"]
    assert sorted(b_stream[:40]) == list(range(40)) and sorted(b_stream[40:80]) == list(range(40))  # full passes
    assert b_stream[:40] != b_stream[40:80]  # reshuffled each pass
    assert all("r" in e for e in a_stream) and not any("r" in e for e in elements if e["s"] == "b")
    # the same letter on its next pass gets a new random draw (a video clip: a new frame pair)
    first, second = a_stream[:10], a_stream[10:20]
    by_k = {e["k"]: e["r"] for e in first}
    assert all(by_k[e["k"]] != e["r"] for e in second)
    it = make_iterator(mix, lambda r: {"b": np.int64(r["s"] == "b")}, per_process_batch=20, seed=0)
    share = np.mean(np.concatenate([b["b"] for b in _take(it, 10)]))
    assert abs(share - 0.75) < 0.01
    # two hosts deal the endless stream between them: together they see exactly the one-host stream
    key = lambda r: {"key": np.int64(100 * (r["s"] == "b") + r["k"])}
    whole = np.concatenate([b["key"] for b in _take(make_iterator(mix, key, per_process_batch=4, seed=0), 10)])
    hosts = [np.concatenate([b["key"] for b in _take(make_iterator(mix, key, per_process_batch=4, seed=0,
                                                                   process_index=h, process_count=2), 5)])
             for h in range(2)]
    np.testing.assert_array_equal(np.stack(hosts, axis=1).reshape(-1), whole)
    with pytest.raises(ValueError, match="weights must be > 0"):
        mix_sources([(letters, 0.0)], seed=0)

    def picky(record, rng):  # a record-to-pair step that rejects some records (as sample_pair may)
        if record["k"] % 10 == 0:
            raise RecordError(f"/words/{record['k']}", "object absent")
        return record

    it = make_iterator(mix_sources([(words, 1.0, picky)], seed=0), lambda r: {"k": np.int64(r["k"])},
                       per_process_batch=4, seed=0)
    ks = np.concatenate([b["k"] for b in _take(it, 10)]).tolist()
    assert sorted(ks[:36]) == [k for k in range(40) if k % 10]  # the first pass, rejected ones left out
    assert it.skipped.count >= 4


def noisy_threads(record, rng):
    return {**noisy(record, rng), "cv_threads": np.int64(cv2.getNumThreads())}


def test_worker_processes_resume_and_skip():
    it = make_iterator(Numbers(20, bad={5, 6}), noisy_threads, per_process_batch=2, seed=2, worker_count=2)
    assert next(it)["cv_threads"].tolist() == [1, 1]  # workers run OpenCV single-threaded
    _take(it, 1)
    state = it.get_state()
    expected = _take(it, 8)  # past one epoch: both bad records have been met
    assert not {5, 6} & set(np.concatenate([b["i"] for b in expected]).tolist())
    assert it.skipped.count == 2
    resumed = make_iterator(Numbers(20, bad={5, 6}), noisy_threads, per_process_batch=2, seed=2, worker_count=2)
    resumed.set_state(state)
    for got, want in zip(_take(resumed, 8), expected):
        np.testing.assert_array_equal(got["i"], want["i"])
        np.testing.assert_array_equal(got["u"], want["u"])
    _close(it, resumed)


def test_real_sources_anydoor_style_mix(tmp_path):
    truth = synthetic.write_synthetic(tmp_path, num_images=4, num_videos=2, num_frames=6, image_size=(64, 96))
    clips = video.VideoSource(truth.youtube_vos_dir)
    images = coco.CocoSource(truth.coco_dir / "images", truth.coco_dir / "annotations" / "instances.json")
    mix = mix_sources([(clips, 2.0, video.sample_pair), (images, 1.0, coco.image_pair)], seed=0)

    def to_example(pair):  # a stand-in method transform: fixed 32x32 shapes
        resize = lambda a: cv2.resize(a, (32, 32), interpolation=cv2.INTER_NEAREST)
        return {"reference": resize(pair["reference_image"]), "target_mask": resize(pair["target_mask"]),
                "dynamic": np.bool_(pair["dynamic"])}

    it = make_iterator(mix, to_example, per_process_batch=4, seed=0)
    batches = _take(it, 6)
    assert batches[0]["reference"].shape == (4, 32, 32, 3) and SKIPPED_KEY not in batches[0]
    dynamic = np.concatenate([b["dynamic"] for b in batches])
    assert 0 < dynamic.mean() < 1
    assert all(b["target_mask"].reshape(4, -1).max(axis=1).min() == 1 for b in batches)  # objects present


def test_data_benchmark_measures_a_known_cost():
    import time

    from jcompose.bench.data import format_report, run_data_benchmark, workers_needed

    def factory():
        def slow(record, rng):  # a transform of known cost: 20 ms per example
            time.sleep(0.02)
            return noisy(record, rng)
        return slow

    result = run_data_benchmark(factory, Numbers(16, bad={3}), per_process_batch=2, num_batches=4, num_direct=5,
                                steps_per_s=10.0, per_host_batch=8)
    assert 18 <= result["direct"]["transform_ms"] < 40 and result["direct"]["skipped"] == 1
    (pipeline,) = result["pipelines"]
    assert 25 < pipeline["per_worker"] <= 50  # at most 1 / 20 ms
    # 10 steps/s x 8 examples = 80 examples/s at <= 50 per worker: at least 2 workers
    assert result["workers_needed"] == workers_needed(result["examples_per_s_per_worker"], 10.0, 8) >= 2
    assert workers_needed(50.0, 10.0, 8) == 2 and workers_needed(40.0, 10.0, 8) == 2
    assert workers_needed(39.9, 10.0, 8) == 3
    assert "per worker process" in format_report(result)


class Broken(Numbers):
    """Every record is unusable, for two reasons (2 of 3 'image file not found')."""

    def __getitem__(self, i):
        raise RecordError(f"/data/{i}.jpg", "mask too small" if i % 3 == 0 else "image file not found")


def test_no_usable_record_stops_with_the_reasons():
    it = make_iterator(Broken(12), ident, per_process_batch=2, seed=0, max_consecutive_skips=24)  # two epochs
    with pytest.raises(RecordError) as err:
        next(it)
    text = str(err.value)
    print(text)
    assert "Broken" in text and "no usable record in the last 24 records" in text
    assert "'image file not found' x16 (e.g. /data/" in text and "'mask too small' x8" in text
    assert text.index("image file not found") < text.index("mask too small")  # most frequent first
    assert "data.max_consecutive_skips" in text


def test_no_usable_record_in_worker_processes():
    it = make_iterator(Broken(6), ident, per_process_batch=2, seed=0, worker_count=1)
    with pytest.raises(Exception, match="no usable record in the last"):
        next(it)
    _close(it)


def test_an_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(RecordError, match=r"Numbers: the source has no records"):
        make_iterator(Numbers(0), ident, per_process_batch=2, seed=0)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    source = coco.CocoSource(tmp_path, path)
    with pytest.raises(RecordError, match=rf"{path} \(CocoSource\): the source has no records"):
        make_iterator(source, ident, per_process_batch=2, seed=0)
