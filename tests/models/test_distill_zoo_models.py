"""Zoo architectures of the distill package: patch tokenizer, tiny MaskGIT, feature lifter."""

from __future__ import annotations

import pytest
import torch

from diffkit import models, zoo
from diffkit.data.digits import load_digits
from diffkit.models import digit_lifter, maskgit, patch_tokenizer


def test_patch_tokenizer_roundtrip_and_linearity(generator):
    tok = patch_tokenizer.build(patch_tokenizer.DEFAULT_CONFIG)
    x = torch.rand(3, 1, 16, 16, generator=generator)
    torch.testing.assert_close(tok.unpatchify(tok.patchify(x)), x)
    tok.codebook.copy_(patch_tokenizer.fit_kmeans(tok.patchify(x).reshape(-1, 4), 64, 5, generator))
    ids = tok.encode(x)
    assert ids.shape == (3, 64) and ids.max() < 64
    e1, e2 = torch.randn(2, 3, 64, 4, generator=generator)
    torch.testing.assert_close(tok.decode(e1 + 2 * e2), tok.decode(e1) + 2 * tok.decode(e2))
    with pytest.raises(ValueError, match="mask id"):
        tok.embed(torch.full((1, 64), 64))


def test_maskgit_shapes_and_null_class():
    net = maskgit.build({**maskgit.DEFAULT_CONFIG, "depth": 1})
    assert net.mask_id == 64 and net.null_class == 10
    out = net(torch.full((2, 64), 64), torch.tensor([3, 10]))
    assert out.shape == (2, 64, 64)
    with pytest.raises(ValueError, match="64 tokens"):
        net(torch.zeros(1, 10, dtype=torch.long), torch.tensor([0]))


def test_lifter_feature_maps():
    net = digit_lifter.build(digit_lifter.DEFAULT_CONFIG)
    maps = net.feature_maps(torch.zeros(2, 1, 16, 16))
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 16), (32, 8, 8), (48, 4, 4)]
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_registry_order_and_shipped_members():
    order = zoo.train_order(["digits-fpd"])
    assert order.index("digits-patch-tokenizer") < order.index("digits-maskgit")
    assert order[-1] == "digits-fpd" and "digits-lifter" in order
    assert zoo.train_order(["digits-fpd-datafree"])[-1] == "digits-fpd-datafree"
    for name in ("digits-patch-tokenizer", "digits-maskgit", "digits-lifter", "digits-fpd",
                 "digits-fpd-datafree"):  # fmt: skip
        ok, msg = models.verify(name)
        assert ok, f"shipped zoo weights of {name} missing or altered: {msg}"
        models.load(name)
    tok = models.load("digits-patch-tokenizer")
    te = load_digits("test")
    assert float((tok(te.images) - te.images).pow(2).mean()) < 0.02
    assert models.metrics("digits-lifter")["test_accuracy"] > 0.9
    # the data-free member really is data-free, the recipe's member really is not
    assert models.metrics("digits-fpd-datafree")["real_positives"] == 0
    assert models.metrics("digits-fpd-datafree")["gan_weight"] == 0
