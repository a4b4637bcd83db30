from __future__ import annotations

import pytest
import torch

from diffkit.data.digits import load_digits


def test_shapes_range_and_fixed_disjoint_stratified_split():
    tr, te = load_digits("train"), load_digits("test")
    assert tr.images.shape[1:] == (1, 16, 16) and len(tr) + len(te) == 1797
    assert tr.images.min() >= -1 and tr.images.max() <= 1 and tr.images.dtype == torch.float32
    counts_te = torch.bincount(te.labels, minlength=10).float()
    counts_all = torch.bincount(load_digits("all").labels, minlength=10).float()
    torch.testing.assert_close(counts_te / counts_all, torch.full((10,), 0.2), atol=0.01, rtol=0)
    # Disjoint: no test image appears in train.
    flat_tr = {tuple(x.flatten().tolist()) for x in tr.images[:, :, ::4, ::4]}
    overlap = sum(tuple(x.flatten().tolist()) in flat_tr for x in te.images[:, :, ::4, ::4])
    assert overlap < 5  # a handful of identical low-res digits may exist in the source itself


def test_sizes_and_batch_access():
    d = load_digits("test", size=32)
    assert d.images.shape[-1] == 32
    b = d.get_batch(torch.tensor([0, 2]))
    assert b["x"].shape == (2, 1, 32, 32) and b["y"].shape == (2,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits("val")
    with pytest.raises(ValueError, match="size"):
        load_digits("train", size=4)
