from __future__ import annotations

import torch

from diffkit import models
from diffkit.data.digits import load_digits
from diffkit.models.digit_classifier import accuracy


def test_shipped_classifier_accuracy_on_held_out_split():
    net = models.load("digit-classifier")
    te = load_digits("test")
    assert accuracy(net, te.images, te.labels) >= 0.97
    feats, preds = net.embed(te.images[:10])
    assert feats.shape == (10, 128) and preds.shape == (10,)


def test_create_is_random_init_of_same_architecture():
    a = models.create("digit-classifier")
    b = models.load("digit-classifier")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert not torch.equal(a.fc.weight, b.fc.weight)
