"""Evaluation in any feature space: evaluate_features with a callable extractor, HFImageFeatures
around a tiny random-init transformers model (saved and reloaded, as a user loads local weights),
and the docs example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from diffkit.distill.evaluate import (
    HFImageFeatures,
    evaluate_features,
    extract,
    within_class_spread,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "distill.md"


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dino")
    Dinov2Model(
        Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, patch_size=4, image_size=16)
    ).save_pretrained(path)  # fmt: skip
    return Dinov2Model.from_pretrained(path)


def _sets(n=60):
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(n, 1, 16, 16, generator=g).mul(0.3).add(torch.linspace(-1, 0.5, 16))
    labels = torch.arange(n) % 3
    ref = ref + labels.view(-1, 1, 1, 1) * 0.2  # classes differ by brightness
    near = ref + 0.01 * torch.randn(ref.shape, generator=g)
    far = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    return ref.clamp(-1, 1), near.clamp(-1, 1), far, labels


def test_hf_features_preprocess_like_the_model_expects(dino):
    """Grey [-1, 1] images -> RGB [0, 1] -> normalised -> pooler output (DINOv2's CLS token)."""
    f = HFImageFeatures(dino, image_size=16)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    rgb = ((x + 1) / 2).expand(-1, 3, -1, -1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = dino(pixel_values=(rgb - mean) / std).pooler_output
    torch.testing.assert_close(f(x), want)
    assert HFImageFeatures(dino, image_size=32)(x).shape == (3, 16)  # resized to 32, then read
    with pytest.raises(ValueError, match="no 'image_embeds'"):
        HFImageFeatures(dino, image_size=16, output="image_embeds")(x)


def test_evaluate_features_ranks_sets_and_reads_labels(dino):
    ref, near, far, labels = _sets()
    feats = HFImageFeatures(dino, image_size=16)
    m_near = evaluate_features(near, ref, feats, labels=labels, reference_labels=labels,
                               classify=lambda x: labels, batch_size=len(ref))  # fmt: skip
    m_far = evaluate_features(far, ref, feats)
    assert m_near["fid"] < 0.1 * m_far["fid"] and m_near["kid"] < m_far["kid"]
    assert m_near["coverage"] > m_far["coverage"]
    assert m_near["class_acc"] == 1.0
    assert m_near["diversity_ratio"] == pytest.approx(1.0, abs=0.05)  # a near-copy of the reference
    assert "class_acc" not in m_far and "diversity_ratio" not in m_far
    # the same set against itself: FID 0 (up to the float64 matrix square root), full PRDC
    same = evaluate_features(ref, ref, feats)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # precomputed reference features give the same numbers
    pre = evaluate_features(far, None, feats, reference_features=extract(feats, ref))
    assert pre == m_far


def test_extract_is_batch_invariant_and_checks_the_shape(dino):
    ref, *_ = _sets()
    feats = HFImageFeatures(dino, image_size=16)
    torch.testing.assert_close(extract(feats, ref, 7), extract(feats, ref, 1000), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match=r"\(N, D\) tensor"):
        extract(lambda x: x, ref)
    with pytest.raises(ValueError, match="needs the generated images' labels"):
        evaluate_features(ref, ref, lambda x: x.flatten(1), classify=lambda x: x)


def test_within_class_spread():
    f = torch.tensor([[0.0], [2.0], [10.0], [11.0]])
    assert within_class_spread(f, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.5)


def _docs_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(marker)]
    assert len(found) == 1, f"docs/distill.md needs one python block starting {marker!r}"
    return found[0]


def test_docs_feature_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_docs_block("# Evaluate in your own feature space"), scope)
    m = scope["metrics"]
    assert {"kid", "fid", "class_acc", "diversity_ratio", "precision", "recall"} <= set(m)
    assert m["class_acc"] > 0.9  # the shipped student's digits, read by the evaluation network


def test_docs_own_teacher_example_runs(tmp_path, monkeypatch):
    """docs/distill.md's MaskedTeacher / Tokenizer wrapping example trains and samples."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_docs_block("# Wrap your own MaskGIT-style teacher"), scope)
    teacher, student, tok = scope["teacher"], scope["student"], scope["tokenizer"]
    assert isinstance(tok, scope["distill"].Tokenizer)  # satisfies the protocol
    assert scope["ids"].shape == (4, 16) and (scope["ids"] < 16).all()
    assert scope["images"].shape == (4, 1, 16, 16)
    assert scope["teacher_ids"].shape == (4, 16) and (scope["teacher_ids"] < 16).all()
    moved = [k for k, v in student.state_dict().items()
             if not torch.equal(v, teacher.net.state_dict()[k])]  # fmt: skip
    assert moved, "two FPD steps left the student equal to its teacher"
    assert (tmp_path / "out" / "my-fpd" / "metrics.jsonl").is_file()
    assert tok.encode(tok.decode(tok.embed(scope["ids"]))).shape == scope["ids"].shape
