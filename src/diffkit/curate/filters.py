"""Row-local rules: pre-filter (stage 2), source/domain governance (stage 4) and the policy.

The pre-filter defaults follow spec (e): area > 65,536 px (nano-t2i's ``resolution`` floor),
min side >= 200 and aspect <= 3 (DataComp / COYO), bytes >= 5 KB, plus alt-text rules. Governance
is URL-domain governance, as MONET uses the term: registered-domain blocklist (Public Suffix List
via tldextract's bundled snapshot, no network), licence allowlist and takedown lists. The policy
turns scores written by model stages into decisions ("score first, decide later").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from diffkit.curate.schema import drop_rows, pa, require, set_column
from diffkit.curate.stage import Stage

BOILERPLATE = r"^(img|dsc|dscn|dcim|pxl|image|photo|screenshot)?[ _-]?\d+(\.(jpe?g|png|webp|gif))?$"


@dataclass(frozen=True, kw_only=True)
class PreFilterConfig:
    """Cheap geometric and text rules.

    Attributes:
        min_side: Minimum of width and height in pixels (``min_side``).
        min_area: Minimum width*height (``min_area``).
        max_aspect: Maximum of w/h and h/w (``aspect``).
        min_bytes: Minimum file size in bytes (``min_bytes``) for the formats in
            ``min_bytes_mimes``.
        min_bytes_mimes: MIME types the byte floor applies to. Only lossy JPEG by default: a
            small JPEG is an over-compressed one, but a small PNG/GIF is a simple picture that
            compresses well (a flat-colour illustration is often under 2 KB).
        max_uniform_share: Drop blank and solid images (``near_uniform``): rows whose share of
            pixels within 8 levels of the median colour (``uniform_share``) is above this;
            1.0 disables.
        min_entropy: Minimum ``hash_entropy`` (64-bin grey-histogram entropy, bits, max 6)
            (``low_entropy``); 0 disables (the default: a two-colour illustration has ~1 bit).
        alt_text_min_chars: Minimum alt-text length after stripping; 0 allows empty alt text.
        alt_text_max_chars: Maximum alt-text length.
        alt_text_boilerplate: Regex (case-insensitive, full match after stripping) of
            camera-filename alt texts such as ``IMG_1234.jpg`` (``alt_text_rule``); '' disables.
    """

    min_side: int = 200
    min_area: int = 65_536
    max_aspect: float = 3.0
    min_bytes: int = 5_120
    min_bytes_mimes: tuple[str, ...] = ("image/jpeg",)
    max_uniform_share: float = 0.99
    min_entropy: float = 0.0
    alt_text_min_chars: int = 0
    alt_text_max_chars: int = 2_000
    alt_text_boilerplate: str = BOILERPLATE

    def __post_init__(self):
        for f in ("min_side", "min_area", "min_bytes", "alt_text_min_chars"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")
        if not 0.0 <= self.max_uniform_share <= 1.0:
            raise ValueError(f"max_uniform_share must be in [0, 1], got {self.max_uniform_share}")
        if self.max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if self.alt_text_max_chars < self.alt_text_min_chars:
            raise ValueError(f"alt_text_max_chars={self.alt_text_max_chars} < alt_text_min_chars")
        try:
            re.compile(self.alt_text_boilerplate)
        except re.error as e:
            raise ValueError(f"alt_text_boilerplate={self.alt_text_boilerplate!r}: {e}") from e


class PreFilter(Stage):
    name = "prefilter"

    def __init__(self, config: PreFilterConfig | None = None) -> None:
        super().__init__(config or PreFilterConfig())

    def process(self, table):
        c = self.config
        w = np.asarray(table.column("width").to_numpy(), np.int64)
        h = np.asarray(table.column("height").to_numpy(), np.int64)
        b = np.asarray(table.column("bytes_len").to_numpy(), np.int64)
        ent = np.asarray(table.column("hash_entropy").to_numpy(), np.float64)
        aspect = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
        table = drop_rows(table, np.minimum(w, h) < c.min_side, self.name, "min_side")
        table = drop_rows(table, w * h < c.min_area, self.name, "min_area")
        table = drop_rows(table, aspect > c.max_aspect, self.name, "aspect")
        mime = np.asarray(table.column("mime").to_pylist(), object)
        small = (b < c.min_bytes) & np.isin(mime, list(c.min_bytes_mimes))
        table = drop_rows(table, small, self.name, "min_bytes")
        if "uniform_share" in table.column_names:
            share = np.asarray(table.column("uniform_share").to_numpy(), np.float64)
            table = drop_rows(table, share > c.max_uniform_share, self.name, "near_uniform")
        table = drop_rows(table, ent < c.min_entropy, self.name, "low_entropy")
        pat = re.compile(c.alt_text_boilerplate, re.I) if c.alt_text_boilerplate else None
        bad = []
        for t in table.column("alt_text").to_pylist():
            s = (t or "").strip()
            bad.append(
                len(s) < c.alt_text_min_chars
                or len(s) > c.alt_text_max_chars
                or bool(pat and s and pat.fullmatch(s))
            )
        return drop_rows(table, np.array(bad, bool), self.name, "alt_text_rule")


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GovernanceConfig:
    """Source governance.

    Attributes:
        blocked_domains: Blocked hosts; each is reduced to its registered domain, so
            ``images.gettyimages.com`` blocks every ``*.gettyimages.com`` (``blocked_domain``).
        allowed_licenses: Licence allowlist, compared by SPDX-like family after normalisation
            (``cc-by``, ``CC BY 4.0`` and ``cc-by-4.0`` are all ``CC-BY``); empty allows every
            licence, ``''`` in the list allows rows without a licence (``license``). Every row
            gets ``license_spdx`` (the normalised id).
        takedown_sha256: Hex SHA-256 of image bytes or canonical pixels to remove (``takedown``).
        takedown_urls: URLs to remove (``takedown``).
        takedown_file: Optional text file with one SHA-256 or URL per line, re-read every run.
    """

    blocked_domains: tuple[str, ...] = ()
    allowed_licenses: tuple[str, ...] = ()
    takedown_sha256: tuple[str, ...] = ()
    takedown_urls: tuple[str, ...] = ()
    takedown_file: str = ""

    def __post_init__(self):
        for h in self.takedown_sha256:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
                raise ValueError(f"takedown_sha256 entry {h!r} is not 64 hex digits")
        if self.takedown_file and not Path(self.takedown_file).is_file():
            raise ValueError(f"takedown_file={self.takedown_file!r} does not exist")


_EXTRACT = None

# Common open licences (SPDX families, version-free): what the default recipe allows.
OPEN_LICENSES = (
    "CC0", "PDM", "CC-BY", "CC-BY-SA", "Apache", "MIT", "BSD", "OFL", "ODC-BY", "ODbL",
)  # fmt: skip
_LICENSE_WORDS = (
    (r"\bcreative[- ]?commons\b", "cc"), (r"\battribution\b", "by"),
    (r"\bshare[- ]?alike\b", "sa"), (r"\bnon[- ]?commercial\b", "nc"),
    (r"\bno[- ]?deriv(?:ative)?s?\b", "nd"), (r"\b(?:license|licence|international|generic|unported)\b", ""),
)  # fmt: skip
_LICENSE_ALIASES = {
    "cc0": "CC0", "cc-0": "CC0", "cc-zero": "CC0", "zero": "CC0",
    "public-domain": "PDM", "publicdomain": "PDM", "pd": "PDM", "pdm": "PDM", "cc-pdm": "PDM",
    "apache": "Apache", "mit": "MIT", "bsd": "BSD", "ofl": "OFL", "odc-by": "ODC-BY",
    "odbl": "ODbL",
}  # fmt: skip


def normalize_license(text: str | None) -> tuple[str, str]:
    """SPDX-like ``(id, family)`` of a free-text licence: ``cc-by``, ``CC BY 4.0``,
    ``cc-by-4.0`` and ``Creative Commons Attribution 4.0 International`` all have family
    ``CC-BY`` (ids ``CC-BY`` or ``CC-BY-4.0``); ``('', '')`` for an empty licence. Unknown
    licences keep their text (upper-cased, dash-joined) as id and family."""
    s = (text or "").strip().lower()
    if not s:
        return "", ""
    s = re.sub(r"^https?://creativecommons\.org/(licenses|publicdomain)/", r"cc-", s)
    for pat, rep in _LICENSE_WORDS:
        s = re.sub(pat, rep, s)
    s = re.sub(r"[\s_/]+", "-", s).strip("-")
    s = re.sub(r"-+", "-", s)
    if s in _LICENSE_ALIASES:  # cc0, mit, ... (no version to split off)
        fam = _LICENSE_ALIASES[s]
        return ("CC0-1.0" if fam == "CC0" else fam), fam
    if s.startswith("bsd"):
        return s.upper().replace("CLAUSE", "Clause"), "BSD"
    m = re.fullmatch(r"(.*?)-?v?(\d+(?:\.\d+)*)(?:-[a-z]{2})?", s)
    base, version = (m.group(1), m.group(2)) if m and m.group(1) else (s, "")
    if base.startswith("cc-") and base not in _LICENSE_ALIASES:
        family = base.upper()
    else:
        family = _LICENSE_ALIASES.get(base, base.upper())
    if family == "CC0":
        version = version or "1.0"
    if version and "." not in version:
        version += ".0"
    return (f"{family}-{version}" if version else family), family


def registered_domain(url: str) -> str:
    """Registered domain of a URL or host with tldextract's bundled Public Suffix List (offline)."""
    global _EXTRACT
    if not url:
        return ""
    if _EXTRACT is None:
        tld = require("tldextract", "domain governance")
        _EXTRACT = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)
    r = _EXTRACT(url)
    d = getattr(r, "top_domain_under_public_suffix", None) or r.registered_domain
    return (d or r.domain or "").lower()


class Governance(Stage):
    name = "governance"

    def __init__(self, config: GovernanceConfig | None = None) -> None:
        super().__init__(config or GovernanceConfig())

    def model_revision(self) -> str:
        # The takedown file's content is part of the identity: a new list re-runs this stage.
        if self.config.takedown_file:
            import hashlib

            return hashlib.sha256(Path(self.config.takedown_file).read_bytes()).hexdigest()[:16]
        return ""

    def process(self, table):
        c = self.config
        urls = table.column("url").to_pylist()
        domains = [registered_domain(u) for u in urls]
        table = set_column(table, "domain", domains, pa().string())
        blocked = {registered_domain(d) or d.lower() for d in c.blocked_domains}
        table = drop_rows(
            table, [d in blocked and d != "" for d in domains], self.name, "blocked_domain"
        )
        norm = [normalize_license(x) for x in table.column("license").to_pylist()]
        table = set_column(table, "license_spdx", [i for i, _ in norm], pa().string())
        if c.allowed_licenses:
            allowed = {normalize_license(x)[1] for x in c.allowed_licenses}
            table = drop_rows(table, [f not in allowed for _, f in norm], self.name, "license")
        hashes = {h.lower() for h in c.takedown_sha256}
        urls_out = set(c.takedown_urls)
        if c.takedown_file:
            for line in Path(c.takedown_file).read_text().splitlines():
                s = line.strip()
                if re.fullmatch(r"[0-9a-fA-F]{64}", s):
                    hashes.add(s.lower())
                elif s:
                    urls_out.add(s)
        hb = [(x or b"").hex() for x in table.column("sha256_bytes").to_pylist()]
        hp = [(x or b"").hex() for x in table.column("sha256_pixels").to_pylist()]
        hit = [a in hashes or b in hashes or u in urls_out for a, b, u in zip(hb, hp, urls)]
        return drop_rows(table, hit, self.name, "takedown")


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Thresholds applied to scores written by the model stages.

    Attributes:
        max_scores: ``{column: threshold}``: drop a row when its score is above the threshold
            (e.g. ``score_proxy_marker: 0.5``). The reason is ``watermark`` for columns naming a
            watermark, ``unsafe_text`` for ``score_text_blocklist``, ``exposure`` for
            ``score_overexposed`` / ``score_underexposed``, ``text_in_image`` for
            ``score_text`` / ``score_ocr`` and ``nsfw`` otherwise.
        min_scores: ``{column: threshold}``: drop when the score is below (reason ``low_<column>``).
        missing: What a configured column absent from the data means: ``error`` (a configuration
            error naming the column) or ``ignore``.
    """

    max_scores: dict = field(default_factory=dict)
    min_scores: dict = field(default_factory=dict)
    missing: Literal["error", "ignore"] = "error"

    def __post_init__(self):
        for name in ("max_scores", "min_scores"):
            for k, v in getattr(self, name).items():
                if not isinstance(v, (int, float)):
                    raise ValueError(f"{name}.{k} must be a number, got {v!r}")
        if self.missing not in ("error", "ignore"):
            raise ValueError(f"missing must be 'error' or 'ignore', got {self.missing!r}")


def _policy_reason(col: str) -> str:
    if col.endswith("exposed"):
        return "exposure"
    if "watermark" in col:
        return "watermark"
    if "text_blocklist" in col:
        return "unsafe_text"
    if col in ("score_text", "score_ocr"):
        return "text_in_image"
    return "nsfw"


class Policy(Stage):
    name = "policy"

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__(config or PolicyConfig())

    def _col(self, table, col):
        if col not in table.schema.names:
            if self.config.missing == "error":
                raise ValueError(
                    f"policy threshold on {col!r} but no stage wrote it; columns: "
                    f"{[c for c in table.schema.names if c.startswith('score_')]}"
                )
            return None
        return np.nan_to_num(np.asarray(table.column(col).to_numpy(zero_copy_only=False), float))

    def process(self, table):
        for col, thr in sorted(self.config.max_scores.items()):
            v = self._col(table, col)
            if v is not None:
                table = drop_rows(table, v > thr, self.name, _policy_reason(col))
        for col, thr in sorted(self.config.min_scores.items()):
            v = self._col(table, col)
            if v is not None:
                table = drop_rows(table, v < thr, self.name, f"low_{col}")
        return table
