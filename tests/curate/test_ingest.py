from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffkit.curate.corpus import _bomb_png
from diffkit.curate.ingest import DecodeFailure, Ingest, IngestConfig, decode_image, read_input


def _png(arr, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG", **kw)
    return b.getvalue()


def _img(seed=0, size=(40, 50)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "zero_bytes"),
        (b"<html>404</html>", "wrong_mime"),
        (_bomb_png(), "decompression_bomb"),
        (
            b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9",
            "decode_error",
        ),  # corrupt, complete
    ],
)
def test_decode_guards(data, reason):
    with pytest.raises(DecodeFailure) as e:
        decode_image(data, ".jpg", IngestConfig())
    assert e.value.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("frac", [0.02, 0.05, 0.3, 0.5, 0.9])
def test_truncated_file_is_reported_as_truncated(fmt, frac):
    """Cut anywhere (inside the headers too, where Pillow only says 'cannot identify'): the
    reason is ``truncated``, never ``decode_error``."""
    b = io.BytesIO()
    Image.fromarray(_img(size=(128, 128))).save(b, fmt)
    data = b.getvalue()
    with pytest.raises(DecodeFailure) as e:
        decode_image(data[: max(16, int(len(data) * frac))], "." + fmt.lower(), IngestConfig())
    assert e.value.reason == "truncated"


def test_pixel_hash_ignores_encoding_but_byte_hash_does_not():
    arr = _img()
    png = _png(arr)
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "WEBP", lossless=True)
    a, c = (
        decode_image(png, ".png", IngestConfig()),
        decode_image(b.getvalue(), ".webp", IngestConfig()),
    )
    assert a["sha256_pixels"] == c["sha256_pixels"] and a["phash"] == c["phash"]
    assert png != b.getvalue()
    other = decode_image(_png(_img(1)), ".png", IngestConfig())
    assert other["sha256_pixels"] != a["sha256_pixels"]


def test_exif_transpose_and_alpha_on_white():
    arr = _img(size=(30, 60))
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90
    b = io.BytesIO()
    im.save(b, "JPEG", exif=exif.tobytes())
    d = decode_image(b.getvalue(), ".jpg", IngestConfig())
    assert (d["width"], d["height"]) == (30, 60)  # stored 60x30, shown 30x60
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent -> white
    white = np.full((8, 8, 3), 255, np.uint8)
    assert (
        decode_image(_png(rgba), ".png", IngestConfig())["sha256_pixels"]
        == decode_image(_png(white), ".png", IngestConfig())["sha256_pixels"]
    )


def test_ingest_stage_turns_bad_rows_into_tombstones(tmp_path):
    good = _png(_img())
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "b.jpg").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(_bomb_png())
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe not utf8")
    t = read_input(tmp_path)
    t = t.append_column("status", pa.array(["keep"] * t.num_rows))
    t = t.append_column("drop_stage", pa.array([None] * t.num_rows, pa.string()))
    t = t.append_column("drop_reason", pa.array([None] * t.num_rows, pa.string()))
    out = Ingest().process(t)
    reasons = dict(zip(out.column("source_key").to_pylist(), out.column("drop_reason").to_pylist()))
    assert reasons == {
        "a.png": "alt_text_encoding",
        "b.jpg": "zero_bytes",
        "c.png": "decompression_bomb",
    }
    assert out.num_rows == 3


def test_input_parquet_missing_columns_is_a_config_error(tmp_path):
    pq.write_table(pa.table({"url": ["x"]}), tmp_path / "in.parquet")
    with pytest.raises(ValueError, match="neither image bytes nor a path column"):
        read_input(tmp_path / "in.parquet")
    pq.write_table(
        pa.table({"source_key": ["k"], "image": [_png(_img())]}), tmp_path / "ok.parquet"
    )
    t = read_input(tmp_path / "ok.parquet")
    assert t.num_rows == 1 and t.column("source").to_pylist() == ["ok"]
    with pytest.raises(FileNotFoundError):
        read_input(tmp_path / "nope")


def test_thumb_is_colour_by_default_and_grayscale_on_request():
    """The NCC check's thumbnail: S*S*3 RGB bytes by default (area average of each channel),
    S*S gray bytes with thumb_colour=False, none with thumb_size=0."""
    arr = _img(3, (64, 96))
    png = _png(arr)
    col = np.frombuffer(decode_image(png, ".png", IngestConfig(thumb_size=16))["thumb"], np.uint8)
    assert col.size == 16 * 16 * 3
    want = arr.reshape(16, 4, 16, 6, 3).mean(axis=(1, 3))  # 4x6 boxes per thumbnail pixel
    assert np.abs(col.reshape(16, 16, 3).astype(float) - want).max() <= 1.0
    gray = decode_image(png, ".png", IngestConfig(thumb_size=16, thumb_colour=False))["thumb"]
    assert len(gray) == 16 * 16
    assert decode_image(png, ".png", IngestConfig(thumb_size=0))["thumb"] is None
