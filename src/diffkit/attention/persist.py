"""Save and load a RoPeSLR model: configuration and new parameters survive a round trip.

Two folder layouts, one loader (:func:`load_ropeslr_`):

* **A diffusers folder**, written by ``transformer.save_pretrained(dir)`` while RoPeSLR is applied.
  :func:`~diffkit.attention.apply_ropeslr_` records its config and layers in the model's config
  under the private key ``_ropeslr``, which ``save_pretrained`` writes to ``config.json``; the new
  parameters are submodules of the processors, so they are in the weight file(s) too.
  ``from_pretrained`` builds the plain model and skips both (it warns that the
  ``*.processor.params.*`` weights were not used); :func:`load_ropeslr_` reinstalls RoPeSLR with
  the recorded config and copies those weights in::

      transformer.save_pretrained(d)                      # RoPeSLR applied and trained
      model = WanTransformer3DModel.from_pretrained(d)    # plain model
      load_ropeslr_(model, d)                             # identical outputs

* **A sidecar folder**, written by :func:`save_ropeslr`: ``ropeslr.json`` (config + layers) and
  ``ropeslr.safetensors`` (the new parameters only; the backbone is stored elsewhere). The zoo
  member ``moving-digits-wan-ropeslr`` and ``diffkit sparsify`` use this layout.

If both are present, the sidecar wins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from diffkit import config as cfglib
from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.processors import (
    RECORD_KEY,
    RoPeSLRState,
    _RoPeSLRProcessorBase,
    apply_ropeslr_,
    remove_ropeslr_,
    ropeslr_state,
    ropeslr_state_dict,
)
from diffkit.core.io import atomic_write_json, load_tensors, save_tensors

log = logging.getLogger(__name__)

SIDECAR_CONFIG = "ropeslr.json"
SIDECAR_WEIGHTS = "ropeslr.safetensors"
_PARAMS = ".processor.params."
_WEIGHTS = "diffusion_pytorch_model"


def ropeslr_layers(transformer: nn.Module) -> list[int]:
    """Indices of the self-attention layers that carry a RoPeSLR processor."""
    ropeslr_state(transformer)  # raises if RoPeSLR is not applied
    procs = [getattr(m, "processor", None) for m in transformer.modules()]
    return sorted(p.layer for p in procs if isinstance(p, _RoPeSLRProcessorBase))


def save_ropeslr(transformer: nn.Module, path: str | Path) -> Path:
    """Write the sidecar layout: ``ropeslr.json`` (config + layers) and ``ropeslr.safetensors``.

    Only the new parameters are written; save the backbone yourself (or use ``save_pretrained``,
    which writes both). Returns ``path``.
    """
    path = Path(path)
    config = ropeslr_state(transformer).config
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / SIDECAR_WEIGHTS, ropeslr_state_dict(transformer))
    record = {"config": cfglib.to_dict(config), "layers": ropeslr_layers(transformer)}
    atomic_write_json(path / SIDECAR_CONFIG, record)
    return path


def read_ropeslr_record(path: str | Path) -> tuple[RoPeSLRConfig, list[int] | None]:
    """(config, layers) stored in a folder (sidecar ``ropeslr.json`` or diffusers ``config.json``).

    A sidecar holding a bare config dict (the first zoo format) means all layers (None).
    """
    path = Path(path)
    if (path / SIDECAR_CONFIG).is_file():
        record = json.loads((path / SIDECAR_CONFIG).read_text())
        if "config" not in record:  # bare config: the first sidecar format
            record = {"config": record, "layers": None}
    elif (path / "config.json").is_file() and RECORD_KEY in (
        cfg := json.loads((path / "config.json").read_text())
    ):
        record = cfg[RECORD_KEY]
    else:
        raise ValueError(
            f"no RoPeSLR configuration in {path}: expected {SIDECAR_CONFIG} (save_ropeslr) or a "
            f"config.json with {RECORD_KEY!r} (save_pretrained of a model with RoPeSLR applied)"
        )
    return cfglib.from_dict(RoPeSLRConfig, record["config"]), record.get("layers")


def _weight_files(path: Path, variant: str | None) -> list[Path]:
    """The diffusers weight file(s) of a folder: single, sharded (index.json) or .bin."""
    stem = _WEIGHTS if variant is None else f"{_WEIGHTS}.{variant}"
    for ext in ("safetensors", "bin"):
        single = path / f"{stem}.{ext}"
        if single.is_file():
            return [single]
        index = path / f"{stem}.{ext}.index.json"
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / n for n in names]
    raise ValueError(f"no {stem}.safetensors / .bin (or sharded index) in {path}")


def _read_params(path: Path, variant: str | None) -> dict[str, torch.Tensor]:
    """The RoPeSLR entries (``*.processor.params.*``) of a folder's weights."""
    if (path / SIDECAR_WEIGHTS).is_file():
        return load_tensors(path / SIDECAR_WEIGHTS)
    out: dict[str, torch.Tensor] = {}
    for file in _weight_files(path, variant):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys() if _PARAMS in k})  # noqa: SIM118
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
            out.update({k: v for k, v in sd.items() if _PARAMS in k})
    return out


def load_ropeslr_(
    transformer: nn.Module,
    path: str | Path,
    *,
    variant: str | None = None,
    state: RoPeSLRState | None = None,
) -> dict[str, object]:
    """Reinstall RoPeSLR on ``transformer`` from a folder and load its trained parameters.

    ``path`` is a ``save_pretrained`` folder of a model that had RoPeSLR applied, or a
    :func:`save_ropeslr` folder. The config and layers come from the folder; ``variant`` picks
    ``diffusion_pytorch_model.<variant>.safetensors``; ``state`` is passed on to
    :func:`apply_ropeslr_` (shared by the experts of a pipeline). Returns what
    :func:`apply_ropeslr_` returns, for :func:`remove_ropeslr_`. Raises ``ValueError`` (leaving
    the model as it was) if the folder's parameters do not match the processors.
    """
    path = Path(path)
    config, layers = read_ropeslr_record(path)
    tensors = _read_params(path, variant)
    replaced = apply_ropeslr_(transformer, config, layers, state=state)
    expected = set(ropeslr_state_dict(transformer))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    try:
        if missing or unexpected:
            raise ValueError(
                f"RoPeSLR parameters in {path} do not match the model: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                "was it saved after remove_ropeslr_, or from another model?"
            )
        try:
            transformer.load_state_dict(tensors, strict=False)
        except RuntimeError as e:  # shape mismatch
            raise ValueError(f"RoPeSLR parameters in {path} do not fit the model: {e}") from None
    except ValueError:
        remove_ropeslr_(transformer, replaced)
        raise
    log.info("RoPeSLR restored from %s (%d tensors)", path, len(tensors))
    return replaced
