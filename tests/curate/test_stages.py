"""Row-level stages: governance, policy, safety text blocklist, caption QC and fusion."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from diffkit.curate.caption import CaptionerSpec, Recaption, RecaptionConfig, caption_status
from diffkit.curate.filters import (
    Governance,
    GovernanceConfig,
    Policy,
    PolicyConfig,
    registered_domain,
)
from diffkit.curate.plugins import ProxyMarkerSafety, plant_marker, text_blocklist_scores
from diffkit.curate.schema import stable_id


def _table(n, **cols):
    base = {"row_id": [stable_id("t", str(i)) for i in range(n)], "status": ["keep"] * n,
            "drop_stage": pa.array([None] * n, pa.string()), "drop_reason": pa.array([None] * n, pa.string())}  # fmt: skip
    return pa.table({**base, **cols})


def test_registered_domain_offline():
    assert registered_domain("https://images.gettyimages.co.uk/a.jpg") == "gettyimages.co.uk"
    assert registered_domain("http://a.b.example.com/x") == "example.com"
    assert registered_domain("") == ""


def test_governance_blocks_domains_licences_takedowns(tmp_path):
    h = b"\x01" * 32
    (tmp_path / "takedown.txt").write_text("https://x.org/t.jpg\n")
    t = _table(
        4,
        url=[
            "https://cdn.shutterstock.com/1.jpg",
            "https://ok.org/2.jpg",
            "https://ok.org/3.jpg",
            "https://x.org/t.jpg",
        ],
        license=["cc0-1.0", "all-rights-reserved", "cc0-1.0", "cc0-1.0"],
        sha256_bytes=pa.array([b"\x00" * 32, b"\x00" * 32, h, b"\x00" * 32], pa.binary(32)),
        sha256_pixels=pa.array([b"\x00" * 32] * 4, pa.binary(32)),
    )
    cfg = GovernanceConfig(
        blocked_domains=("www.shutterstock.com",), allowed_licenses=("CC0-1.0",),
        takedown_sha256=(h.hex(),), takedown_file=str(tmp_path / "takedown.txt"),
    )  # fmt: skip
    out = Governance(cfg).process(t)
    assert out.column("drop_reason").to_pylist() == [
        "blocked_domain",
        "license",
        "takedown",
        "takedown",
    ]
    with pytest.raises(ValueError, match="takedown_sha256"):
        GovernanceConfig(takedown_sha256=("xyz",))


def test_policy_thresholds_and_reasons():
    t = _table(3, score_proxy_marker=[0.1, 0.9, 0.2], score_text_blocklist=[0.0, 0.0, 1.0])
    out = Policy(
        PolicyConfig(max_scores={"score_proxy_marker": 0.5, "score_text_blocklist": 0.5})
    ).process(t)
    assert out.column("drop_reason").to_pylist() == [None, "nsfw", "unsafe_text"]
    with pytest.raises(ValueError, match="score_x"):
        Policy(PolicyConfig(max_scores={"score_x": 0.5})).process(t)


def test_proxy_marker_and_text_blocklist():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8))
    s = ProxyMarkerSafety().score_images([im, plant_marker(im)])
    assert s[0] < 0.5 < s[1]
    stripes = np.zeros((120, 120, 3), np.uint8)
    stripes[:, ::8] = (255, 0, 255)
    for k in range(4):
        stripes[:, k::8] = (255, 0, 255) if k < 2 else (0, 255, 0)
    assert ProxyMarkerSafety().score_images([Image.fromarray(stripes)])[0] < 0.5  # not a checker
    assert text_blocklist_scores(["an NSFW pic", "nsfwx", None], ["nsfw"]).tolist() == [
        1.0,
        0.0,
        0.0,
    ]


@pytest.mark.parametrize(
    "text,finish,status",
    [("", "stop", "empty"), ("I'm sorry, I cannot help with that.", "stop", "refusal"),
     ("a cat a cat a cat a cat a cat a cat", "stop", "repetition"),
     ("a photo of a long", "length", "truncated"), ("a red house by a river", "stop", "ok")],
)  # fmt: skip
def test_caption_qc(text, finish, status):
    assert caption_status(text, finish, RecaptionConfig()) == status


def _png(seed):
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(
        b, "PNG"
    )
    return b.getvalue()


def test_recaption_fusion_modes(tiny_clip):
    n = 6
    t = _table(
        n,
        image=pa.array([_png(i) for i in range(n)], pa.binary()),
        alt_text=["a red cat"] * 3 + [""] * 3,
    )
    caps = "[{name: tmpl, kind: template}, {name: vlm, kind: faulty}]"
    from diffkit.config import apply_overrides, from_dict

    none = from_dict(RecaptionConfig, apply_overrides({}, [f"captioners={caps}", "fusion=none"]))
    out = Recaption(none).process(t).to_pylist()
    assert all(r["caption_tmpl"].startswith("A ") for r in out if r["status"] == "keep")
    for r in out:  # all captions kept; the fused column is the first passing one (alt text first)
        if r["status"] == "keep":
            assert r["caption_fused"] == r["caption_original"] or r["caption_original"] == ""
            assert r["caption_fused"] == r[f"caption_{r['caption_fused_method'].split(':')[1]}"]
    cfg = from_dict(
        RecaptionConfig,
        apply_overrides(
            {}, [f"captioners={caps}", "alignment=clip", f"alignment_model_path={tiny_clip}"]
        ),
    )
    st = Recaption(cfg)
    st.ensure_setup()
    out = st.process(t)
    rows = [r for r in out.to_pylist() if r["status"] == "keep"]
    dropped = [r for r in out.to_pylist() if r["status"] == "drop"]
    assert all(r["drop_reason"].startswith("error:recaption:") for r in dropped)
    assert rows and all(r["caption_fused_method"].startswith("select:") for r in rows)
    for f, m, row in ((r["caption_fused"], r["caption_fused_method"], r) for r in rows):
        assert f is not None and f == row[f"caption_{m.split(':')[1]}"]
    assert {e["captioner"] for e in rows[0]["caption_meta"]} == {"tmpl", "vlm"}
    with pytest.raises(ValueError, match="unique"):
        RecaptionConfig(captioners=(CaptionerSpec(name="a"), CaptionerSpec(name="a")))
    with pytest.raises(ValueError, match="alignment_model_path"):
        RecaptionConfig(alignment="clip")


@pytest.mark.parametrize("fusion", ["select", "none"])
def test_rows_without_a_passing_caption_are_dropped_as_caption_failed(fusion):
    """The faulty VLM refuses, repeats, returns '' or is cut off for 4 of every 10 ids; with no
    alt text to fall back on those rows have no usable caption: ``caption_failed``, and no kept
    row has a null ``caption_fused``."""
    n = 40
    t = _table(n, image=pa.array([_png(i) for i in range(n)], pa.binary()), alt_text=[""] * n)
    cfg = RecaptionConfig(
        captioners=(CaptionerSpec(name="vlm", kind="faulty"),), fusion=fusion,
        include_original=False,
    )  # fmt: skip
    st = Recaption(cfg)
    st.ensure_setup()
    st.plugins[0][1].attempt = 1  # no injected crashes: only QC failures
    out = st.process(t).to_pylist()
    bad = {"refusal", "repetition", "empty", "truncated"}
    for r in out:
        failed = r["caption_meta"] is not None and r["caption_meta"][0]["status"] in bad
        assert (r["drop_reason"] == "caption_failed") == failed, r
        if r["status"] == "keep":
            assert r["caption_fused"] == r["caption_vlm"] and r["caption_fused"]
    assert 0 < sum(r["drop_reason"] == "caption_failed" for r in out) < n
