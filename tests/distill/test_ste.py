"""Straight-through routing, remask and the one-step refinement."""

from __future__ import annotations

import pytest
import torch

from diffkit.core.samplers import maskgit_sample
from diffkit.distill import ClassConditionalTeacher, refine, remask, straight_through
from diffkit.models.maskgit import TinyMaskGIT


@pytest.mark.parametrize("mode", ["categorical", "argmax", "gumbel"])
def test_ste_forward_is_exact_codebook(mode, generator):
    logits = torch.randn(2, 5, 7, generator=generator)
    E = torch.randn(7, 3, generator=generator)
    r = straight_through(logits, E, mode, generator=generator)
    torch.testing.assert_close(r.emb, E[r.ids], rtol=0, atol=1e-6)
    if mode == "argmax":
        assert torch.equal(r.ids, logits.argmax(-1))


def test_ste_gradient_equals_soft_path(generator):
    logits = torch.randn(3, 4, 6, generator=generator)
    E = torch.randn(6, 2, generator=generator)
    w = torch.randn(3, 4, 2, generator=generator)
    l1 = logits.clone().requires_grad_(True)
    (straight_through(l1, E, "categorical", generator=generator).emb * w).sum().backward()
    l2 = logits.clone().requires_grad_(True)
    ((torch.softmax(l2, -1) @ E) * w).sum().backward()
    torch.testing.assert_close(l1.grad, l2.grad)


def test_gumbel_mode_is_what_the_docstring_says(generator):
    """gumbel: forward argmax(l / t + g) (the categorical sample), backward softmax(l / t + g)."""
    t = 0.5
    logits = torch.randn(3, 4, 6, generator=generator)
    E = torch.randn(6, 2, generator=generator)
    g = -torch.log(-torch.log(torch.rand(3, 4, 6, generator=generator)))
    w = torch.randn(3, 4, 2, generator=generator)
    l1 = logits.clone().requires_grad_(True)
    r = straight_through(l1, E, "gumbel", temperature=t, noise=g)
    assert torch.equal(r.ids, (logits / t + g).argmax(-1))
    assert torch.equal(
        r.ids, straight_through(logits, E, "categorical", temperature=t, noise=g).ids
    )
    (r.emb * w).sum().backward()
    l2 = logits.clone().requires_grad_(True)
    ((torch.softmax(l2 / t + g, -1) @ E) * w).sum().backward()
    torch.testing.assert_close(l1.grad, l2.grad)
    l3 = logits.clone().requires_grad_(True)  # not the relaxation softmax((l + g) / t)
    ((torch.softmax((l3 + g) / t, -1) @ E) * w).sum().backward()
    assert not torch.allclose(l1.grad, l3.grad, rtol=1e-3, atol=1e-5)


def test_soft_mode_decodes_mixture(generator):
    logits = torch.randn(2, 3, 5, generator=generator)
    E = torch.randn(5, 4, generator=generator)
    r = straight_through(logits, E, "soft", generator=generator)
    torch.testing.assert_close(r.emb, torch.softmax(logits, -1) @ E)


def test_categorical_samples_follow_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[[0.0, 1.0, 2.0]]]).expand(4000, 1, 3)
    r = straight_through(logits, torch.eye(3), "categorical", generator=g)
    freq = torch.bincount(r.ids.flatten(), minlength=3).float() / 4000
    torch.testing.assert_close(
        freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), atol=0.03, rtol=0
    )


def test_ste_bad_input(generator):
    with pytest.raises(ValueError, match="mode="):
        straight_through(torch.randn(1, 2, 3), torch.randn(3, 2), "hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="codebook has 4"):
        straight_through(torch.randn(1, 2, 3), torch.randn(4, 2))


@pytest.mark.parametrize("r", [0.0, 0.1, 0.33, 0.5, 1.0])
def test_remask_exact_count(r, generator):
    tokens = torch.randint(0, 64, (6, 64), generator=generator)
    z, m = remask(tokens, r, 64, codebook_size=64, generator=generator)
    assert (m.sum(1) == round(r * 64)).all()
    assert ((z == 64) == m).all()  # the mask id appears exactly where masked
    assert torch.equal(z[~m], tokens[~m])
    assert (z[~m] < 64).all()  # never a code


def test_remask_mask_id_collision():
    with pytest.raises(ValueError, match="collides with a codebook entry"):
        remask(torch.zeros(1, 4, dtype=torch.long), 0.5, 3, codebook_size=64)


def _teacher(seed=0):
    torch.manual_seed(seed)
    return ClassConditionalTeacher(TinyMaskGIT(codebook_size=16, num_tokens=16, dim=32, depth=1))


def test_refine_only_changes_masked_positions(generator):
    T = _teacher()
    draft = torch.randint(0, 16, (5, 16), generator=generator)
    out, masked = refine(T, draft, T.condition(torch.arange(5)), 0.25, generator=generator)
    assert (masked.sum(1) == 4).all()
    assert torch.equal(out[~masked], draft[~masked])
    assert (out < 16).all()


def test_maskgit_sampler_unmasks_everything(generator):
    T = _teacher()
    for steps in (1, 2, 4, 8):
        ids = T.sample(T.condition(torch.arange(4)), steps, generator=generator)
        assert ids.shape == (4, 16) and (ids != T.mask_id).all() and (ids < 16).all()
    # the core sampler directly, and the schedule is monotone (masked count never grows)
    counts = []

    def fn(z):
        counts.append(int((z == 16).sum()))
        return T.logits(z, T.condition(torch.arange(2)))

    maskgit_sample(fn, (2, 16), 16, steps=6, generator=generator)
    assert counts == sorted(counts, reverse=True) and counts[0] == 32


def test_teacher_sampling_deterministic():
    T = _teacher()
    a = T.sample(T.condition(torch.arange(3)), 4, generator=torch.Generator().manual_seed(3))
    b = T.sample(T.condition(torch.arange(3)), 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
