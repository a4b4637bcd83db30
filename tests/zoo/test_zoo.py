from __future__ import annotations

import pytest

from diffkit import models, zoo


def test_train_order_puts_dependencies_first():
    order = zoo.train_order()
    assert set(order) == set(models.list_models())
    for n in order:
        for d in models.entry(n).depends_on:
            assert order.index(d) < order.index(n)


@pytest.mark.slow
def test_digit_classifier_recipe_reproduces_shipped_accuracy(tmp_path):
    from diffkit.zoo.digit_classifier import train

    m = train(tmp_path / "dc", seed=0)
    shipped = models.metrics("digit-classifier")
    assert m["test_accuracy"] >= 0.97
    assert abs(m["test_accuracy"] - shipped["test_accuracy"]) < 0.01
