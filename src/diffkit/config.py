"""Config objects as the single source of truth: frozen dataclasses <-> dicts / YAML / CLI overrides.

Every method's ``<Method>Config`` is a ``@dataclass(frozen=True, kw_only=True)`` whose
``__post_init__`` raises ``ValueError`` naming the field and the value. This module turns such
configs into plain dicts and back (strictly: an unknown key is an error that names it and lists the
valid ones), reads YAML recipes, applies dotted ``key.sub=value`` overrides, and saves configs with
a version tag.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

C = TypeVar("C")
CONFIG_VERSION = 1


def to_dict(cfg: Any) -> dict[str, Any]:
    """A nested plain dict (tuples become lists) of a dataclass config."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where}={value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}={value!r} does not match {tp}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where} needs {len(args)} items, got {len(value)}: {value!r}")
        return (
            tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            if args
            else tuple(value)
        )
    if origin in (list, dict):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads "3e-4" (no dot) as a string; accept plain numeric strings.
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build ``cls`` from a dict, checking keys and types; errors name the dotted field."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(prefix + u for u in unknown)} for {cls.__name__}; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML scalars) to a nested dict copy."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a mapping")
        node[parts[-1]] = _parse_scalar(raw)
    return out


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # shipped as package data


def list_recipes(method: str) -> list[str]:
    """Names of the recipes shipped for ``method`` (``align``, ``attention``, ``curate``,
    ``distill``, ``quantize``); they live in the installed package, not the source tree."""
    folder = RECIPES_DIR / method
    if not folder.is_dir():
        known = sorted(p.name for p in RECIPES_DIR.iterdir() if p.is_dir())
        raise ValueError(f"no recipes for method={method!r}; methods with recipes: {known}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def recipe_path(method: str, ref: str | Path) -> Path:
    """Resolve a recipe given by shipped name (``sd15`` or ``sd15.yaml``) or by path.

    An existing file is taken as it is; otherwise a bare name is looked up among the recipes
    shipped for ``method``. Nothing falls back silently: an unknown name or a missing file raises
    ``FileNotFoundError`` naming it and listing the shipped recipes.
    """
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    shipped = list_recipes(method)
    name = p.name[: -len(p.suffix)] if p.suffix in (".yaml", ".yml") else p.name
    if len(p.parts) == 1 and name in shipped:
        return RECIPES_DIR / method / f"{name}.yaml"
    raise FileNotFoundError(
        f"recipe {str(ref)!r} is neither a file nor a shipped {method} recipe; "
        f"shipped: {', '.join(shipped) or 'none'}"
    )


def read_recipe(method: str, ref: str | Path) -> dict[str, Any]:
    """The YAML recipe ``ref`` (a shipped name or a path, see :func:`recipe_path`) as a dict."""
    return load_yaml(recipe_path(method, ref))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (an empty file is an empty dict)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # one line naming file, line and column; no traceback
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"recipe {path}:{where}: YAML syntax error: {what}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must contain a mapping at the top level")
    return data


def save(cfg: Any, path: str | Path) -> Path:
    """Write ``{"version", "type", "config"}`` JSON atomically."""
    from diffkit.core.io import atomic_write_json

    return atomic_write_json(
        path, {"version": CONFIG_VERSION, "type": type(cfg).__name__, "config": to_dict(cfg)}
    )


def load(cls: type[C], path: str | Path) -> C:
    """Read what :func:`save` wrote, checking the version and type."""
    blob = json.loads(Path(path).read_text())
    if blob.get("version") != CONFIG_VERSION:
        raise ValueError(f"{path}: config version {blob.get('version')} != {CONFIG_VERSION}")
    if blob.get("type") != cls.__name__:
        raise ValueError(f"{path}: holds a {blob.get('type')}, expected {cls.__name__}")
    return from_dict(cls, blob["config"])


def field_docs(cls: type) -> dict[str, str]:
    """Per-field help parsed from the class docstring's ``Attributes:`` section."""
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    in_attrs = False
    current = None
    for line in doc.splitlines():
        s = line.strip()
        if s.startswith("Attributes:"):
            in_attrs = True
            continue
        if not in_attrs:
            continue
        if not s:
            current = None
            continue
        name, sep, rest = s.partition(":")
        if sep and name.isidentifier() and " " not in name:
            current = name
            out[name] = rest.strip()
        elif current:
            out[current] += " " + s
    return out
