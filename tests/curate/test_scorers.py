"""Quality scorers: sharpness (variance of the Laplacian), exposure, and the LAION-style
aesthetic head on CLIP embeddings (a random-init head on the tiny CLIP), through the policy."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from diffkit.curate.annotate import Safety, SafetyConfig
from diffkit.curate.filters import Policy, PolicyConfig
from diffkit.curate.schema import stable_id
from diffkit.curate.scorers import (
    AestheticScorer,
    OverexposedScorer,
    SharpnessScorer,
    UnderexposedScorer,
    laplacian_variance,
    save_aesthetic_head,
)


def _checker(size=256, cell=8):
    r = (np.arange(size) // cell) % 2
    return Image.fromarray(((r[:, None] ^ r[None, :]) * 200 + 20).astype(np.uint8)).convert("RGB")


def test_laplacian_variance_closed_form():
    # a vertical step of height a: the Laplacian is +-a on the two columns beside the edge
    g = np.zeros((10, 10), np.float32)
    g[:, 5:] = 100.0
    lap = np.zeros((8, 8))
    lap[:, 3], lap[:, 4] = 100.0, -100.0
    assert laplacian_variance(g) == pytest.approx(lap.var())
    assert laplacian_variance(np.full((9, 9), 7.0, np.float32)) == 0.0


def test_sharpness_and_exposure_order_images():
    sharp = _checker()
    blurred = [sharp.filter(ImageFilter.GaussianBlur(r)) for r in (1, 2, 4)]
    s = SharpnessScorer().score_images([sharp, *blurred])
    assert all(a > b for a, b in zip(s, s[1:]))  # more blur, lower score
    white = Image.new("RGB", (64, 64), (254, 254, 254))
    dark = Image.new("RGB", (64, 64), (2, 2, 2))
    assert OverexposedScorer().score_images([white, dark, sharp]).tolist() == [1.0, 0.0, 0.0]
    assert UnderexposedScorer().score_images([white, dark, sharp]).tolist() == [0.0, 1.0, 0.0]


def test_aesthetic_head_on_clip_embeddings(tiny_clip, tmp_path):
    d = tmp_path / "aes"
    shutil.copytree(tiny_clip, d)
    with pytest.raises(ValueError, match="aesthetic_head"):
        AestheticScorer(str(d))
    save_aesthetic_head(d, [16, 32, 8, 1], seed=0)
    sc = AestheticScorer(str(d))
    sc.setup()
    ims = [_checker(), _checker(cell=16), Image.new("RGB", (64, 64), (200, 30, 30))]
    got = sc.score_images(ims)
    emb = sc.clip.embed_images(ims)
    x = emb
    for w, b in sc.layers:
        x = x @ w.T + b
    np.testing.assert_allclose(got, x[:, 0], rtol=1e-6)
    assert np.isfinite(got).all() and len(set(np.round(got, 6))) == 3
    save_aesthetic_head(d, [8, 1])  # wrong input width for this CLIP: a configuration error
    with pytest.raises(ValueError, match="expects 8-d embeddings, the CLIP model gives 16"):
        AestheticScorer(str(d)).setup()


def test_scorers_through_safety_and_policy():
    ims = [_checker(), _checker().filter(ImageFilter.GaussianBlur(4)), Image.new("RGB", (256, 256), (255, 255, 255))]  # fmt: skip
    import io

    data = []
    for im in ims:
        b = io.BytesIO()
        im.save(b, "PNG")
        data.append(b.getvalue())
    n = len(ims)
    t = pa.table({
        "row_id": [stable_id("t", str(i)) for i in range(n)], "status": ["keep"] * n,
        "drop_stage": pa.array([None] * n, pa.string()), "drop_reason": pa.array([None] * n, pa.string()),
        "image": pa.array(data, pa.binary()), "alt_text": [""] * n,
    })  # fmt: skip
    st = Safety(SafetyConfig(scorers=("sharpness", "overexposed")))
    st.ensure_setup()
    out = st.process(t)
    assert {"score_sharpness", "score_overexposed"} <= set(out.column_names)
    pol = Policy(PolicyConfig(min_scores={"score_sharpness": 50.0}, max_scores={"score_overexposed": 0.5}))  # fmt: skip
    res = pol.process(out).column("drop_reason").to_pylist()
    assert res == [None, "low_score_sharpness", "exposure"]
