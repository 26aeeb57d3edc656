"""Loaders: length buckets, padding, fixed-shape batches."""

import numpy as np

from dgm import training


def test_sequence_loader_buckets_and_pads():
    lengths = np.array([5, 2, 9, 3, 7])
    mask = (np.arange(10)[None, :] < lengths[:, None]).astype(np.float32)
    x = np.ones((5, 10, 2), np.float32) * mask[..., None]
    loader = training.SequenceLoader(x, mask, 2, bucket_width=4)
    rows = loader.order(np.random.default_rng(0))
    assert rows.shape == (3, 2)
    assert sorted(rows[rows >= 0].tolist()) == [0, 1, 2, 3, 4]
    for row in rows:
        xb, mb = loader.batch(row)
        valid = row[row >= 0]
        assert xb.shape[1] == min(10, 4 * int(np.ceil(lengths[valid].max() / 4)))
        assert float(mb.sum()) == lengths[valid].sum()
    # buckets: sorted by length, contiguous pairs
    assert {tuple(sorted(r.tolist())) for r in rows} == {(1, 3), (0, 4), (-1, 2)}


def test_array_loader_drops_partial_batch():
    loader = training.ArrayLoader(np.arange(10, dtype=np.float32)[:, None], 4)
    rows = loader.order(np.random.default_rng(0))
    assert rows.shape == (2, 4) and len(set(rows.ravel().tolist())) == 8
    assert loader.batch(rows[0]).shape == (4, 1)


def test_sequence_loader_zeroes_filler_rows_and_shuffles_its_buckets_each_epoch():
    lengths = np.array([5, 2, 9, 3, 7])
    mask = (np.arange(10)[None, :] < lengths[:, None]).astype(np.float32)
    x = np.ones((5, 10, 2), np.float32) * mask[..., None]
    loader = training.SequenceLoader(x, mask, 2, bucket_width=4)
    orders = [loader.order(np.random.default_rng(epoch)) for epoch in range(8)]
    # the buckets are fixed; their order differs between epochs
    assert len({tuple(map(tuple, rows)) for rows in orders}) > 1
    filler = next(r for r in orders[0] if (r < 0).any())
    xb, mb = loader.batch(filler)
    gone = np.asarray(filler < 0)
    assert not np.asarray(xb)[gone].any() and not np.asarray(mb)[gone].any()


def test_array_loader_reshuffles_each_epoch_and_keeps_a_batch_smaller_than_batch_size():
    loader = training.ArrayLoader(np.arange(10, dtype=np.float32)[:, None], 4)
    firsts = {tuple(loader.order(np.random.default_rng(e))[0]) for e in range(8)}
    assert len(firsts) > 1
    small = training.ArrayLoader(np.arange(3, dtype=np.float32)[:, None], 4)
    rows = small.order(np.random.default_rng(0))
    assert rows.shape == (1, 3) and sorted(rows[0].tolist()) == [0, 1, 2]
