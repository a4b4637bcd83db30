"""Lazy package namespaces (PEP 562): a package's public names are imported from their submodule
on first access, so importing the package (or its torch-free ``cli`` module, and so
``diffkit <method> --help``) does not import torch. Imports nothing of ours; any layer may use it.

>>> __getattr__, __dir__, __all__ = lazy_exports(__name__, {"LinearDPO": "objective"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, where: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose public name ``n`` lives in the
    submodule ``where[n]``. A resolved name is cached in the package's namespace."""

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
