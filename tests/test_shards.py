"""Preprocessed ArrayRecord shards: the same rows as decoding, resumable, split by process."""

import os

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import shards
from cxr_jax.data.loader import RecordSource
from cxr_jax.data.records import Box, Record

NAMES = ("a", "b")


def _records(tmp_path, n=7):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        path = str(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (40 + i, 48), np.uint8)).save(path)
        boxes = (Box("a", 2.0, 3.0, 20.0, 25.0), Box("zzz", 1.0, 1.0, 5.0, 5.0)) if i % 3 == 0 \
            else ()
        recs.append(Record(path, {"a": float(i % 2), "b": float("nan")}, boxes))
    recs.append(Record(str(tmp_path / "missing.png"), {"a": 1.0, "b": 0.0}))  # unreadable
    return recs


def test_shards_give_the_decoded_rows_resume_and_split_by_process(tmp_path):
    recs = _records(tmp_path)
    out = str(tmp_path / "shards")
    kw = dict(image_size=32, num_shards=3)
    # Two "processes" write disjoint shards: 0 and 2, then 1.
    shards.write_shards(recs, NAMES, out, **kw, process_index=0, process_count=2)
    assert sorted(f for f in os.listdir(out) if f.endswith(".array_record")) == [
        shards.shard_name(0, 3), shards.shard_name(2, 3)]
    with pytest.raises(ValueError, match="1 of 3 shards are missing"):
        shards.ShardSource(out)
    shards.write_shards(recs, NAMES, out, **kw, process_index=1, process_count=2)
    src, ref = shards.ShardSource(out), RecordSource(recs, NAMES, image_size=32)
    assert len(src) == len(recs) == 8
    for i in range(len(recs)):
        a, b = src[i], ref[i]
        assert a.keys() == b.keys() == {"image", "labels", "valid"}
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert bool(a["valid"]) == bool(b["valid"]) == (i < 7)
    full = src.item(0)  # boxes at the output size, the unknown label as -1
    assert full["boxes"].shape == (2, 4) and full["box_labels"].tolist() == [0, -1]
    assert src.item(1)["boxes"].shape == (0, 4)
    # Resume: a deleted shard (and a stale temporary file) is rewritten, byte for byte.
    path = os.path.join(out, shards.shard_name(1, 3))
    before = open(path, "rb").read()
    os.remove(path)
    open(path + ".tmp", "wb").write(b"half")
    shards.write_shards(recs, NAMES, out, **kw)
    assert open(path, "rb").read() == before
    with pytest.raises(ValueError, match="other settings"):
        shards.write_shards(recs, NAMES, out, image_size=48, num_shards=3)


def test_training_reads_the_shards_of_its_own_split(tmp_path, monkeypatch):
    import ml_collections

    from cxr_jax.data import real
    recs = _records(tmp_path, n=4)
    monkeypatch.setattr(real, "splits", lambda config: (recs[:3], recs[3:], NAMES, "bce"))
    out = str(tmp_path / "shards")
    shards.write_shards(recs[:3], NAMES, out, image_size=32, num_shards=2)
    config = ml_collections.ConfigDict(dict(dataset="nih", data_dir=str(tmp_path),
                                            image_size=32, num_test=1, shards_dir=out))
    data = real.build(config)
    assert isinstance(data.train, shards.ShardSource) and len(data.train) == 3
    np.testing.assert_array_equal(data.train[2]["image"],
                                  RecordSource(recs[:3], NAMES, image_size=32)[2]["image"])
    config.image_size = 48
    with pytest.raises(ValueError, match="prepare shards for it"):
        real.build(config)
