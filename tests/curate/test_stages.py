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


def _prefilter_reasons(images: list[bytes], cfg=None) -> list:
    from diffkit.curate.filters import PreFilter, PreFilterConfig
    from diffkit.curate.ingest import IngestConfig, decode_image

    rows = [decode_image(b, "", IngestConfig()) | {"bytes_len": len(b)} for b in images]
    n = len(rows)
    cols = {k: [r[k] for r in rows] for k in ("mime", "width", "height", "bytes_len",
                                              "hash_entropy", "uniform_share")}  # fmt: skip
    t = _table(n, alt_text=["a picture"] * n, **cols)
    return PreFilter(cfg or PreFilterConfig()).process(t).column("drop_reason").to_pylist()


def _flat_illustration(seed: int, fmt="PNG") -> bytes:
    """A flat-colour drawing: 2-4 solid shapes on a solid background (compresses to ~1-3 KB)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (320, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = (int(v) for v in rng.integers(0, 200, 2))
        w, h = (int(v) for v in rng.integers(30, 110, 2))
        box = (x0, y0, x0 + w, y0 + h)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=col)
    b = io.BytesIO()
    im.save(b, fmt, optimize=True) if fmt == "PNG" else im.resize((256, 256)).save(
        b, fmt, quality=1
    )
    return b.getvalue()


def test_prefilter_defaults_keep_flat_illustrations_and_small_pngs(recipe):
    """Planted hard cases: 20 flat-colour illustrations (small, low-entropy PNGs) are kept by
    the defaults and by the local recipe; near-blank images and over-compressed JPEGs are not."""
    from diffkit.curate.filters import PreFilterConfig
    from diffkit.curate.pipeline import load_config

    flat = [_flat_illustration(s) for s in range(20)]
    assert min(len(b) for b in flat) < 5_120  # they really are small files
    blank = []
    for s in range(4):
        col = np.random.default_rng(s).integers(0, 256, 3)
        noise = np.random.default_rng(s).normal(0, 1.0, (256, 300, 3))
        blank.append(_png_arr(np.clip(col + noise, 0, 255).astype(np.uint8)))
    blank.append(_png_arr(np.full((256, 256, 3), 255, np.uint8)))
    tiny_jpeg = [_flat_illustration(s, "JPEG") for s in range(3)]
    assert max(len(b) for b in tiny_jpeg) < 2_048
    for cfg in (PreFilterConfig(), load_config(recipe).prefilter):
        reasons = _prefilter_reasons(flat + blank + tiny_jpeg, cfg)
        assert reasons[:20] == [None] * 20, reasons[:20]
        assert reasons[20:25] == ["near_uniform"] * 5
        assert reasons[25:] == ["min_bytes"] * 3


def _png_arr(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


@pytest.mark.parametrize(
    "text,spdx,family",
    [
        ("cc-by", "CC-BY", "CC-BY"),
        ("CC BY 4.0", "CC-BY-4.0", "CC-BY"),
        ("cc-by-4.0", "CC-BY-4.0", "CC-BY"),
        ("Creative Commons Attribution-ShareAlike 3.0 Unported", "CC-BY-SA-3.0", "CC-BY-SA"),
        ("https://creativecommons.org/licenses/by-nc/2.0/", "CC-BY-NC-2.0", "CC-BY-NC"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0", "CC0"),
        ("CC0", "CC0-1.0", "CC0"),
        ("Apache License 2.0", "Apache-2.0", "Apache"),
        ("all rights reserved", "ALL-RIGHTS-RESERVED", "ALL-RIGHTS-RESERVED"),
        ("", "", ""),
    ],
)
def test_normalize_license(text, spdx, family):
    from diffkit.curate.filters import normalize_license

    assert normalize_license(text) == (spdx, family)


def test_default_recipe_allowlist_keeps_common_open_licences(recipe):
    from diffkit.curate.pipeline import load_config

    lic = ["cc-by", "CC BY 4.0", "cc-by-sa-4.0", "CC0", "public domain", "MIT", "apache-2.0",
           "cc-by-nc-nd-4.0", "all-rights-reserved", "CC BY-NC 4.0"]  # fmt: skip
    n = len(lic)
    t = _table(n, url=[""] * n, license=lic, sha256_bytes=[b"\x00" * 32] * n,
               sha256_pixels=[b"\x00" * 32] * n)  # fmt: skip
    out = Governance(load_config(recipe).governance).process(t)
    assert out.column("drop_reason").to_pylist() == [None] * 7 + ["license"] * 3
    assert out.column("license_spdx").to_pylist()[:3] == ["CC-BY", "CC-BY-4.0", "CC-BY-SA-4.0"]
