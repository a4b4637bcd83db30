"""Training recipes of the tiny model zoo (top layer: may use the train loop and method packages).

``train(name)`` runs the recipe named in the :mod:`diffkit.models` registry with a fixed seed,
writes the weights folder atomically, records SHA-256 hashes, and returns the recipe's metrics.
Members whose recipe depends on other members (``depends_on``) expect those to be present.
"""

from __future__ import annotations

import importlib
import logging

from diffkit import models

log = logging.getLogger(__name__)


def train(name: str, *, seed: int = 0, progress: bool = False) -> dict:
    """Retrain a zoo member from scratch; returns the metrics its recipe recorded."""
    e = models.entry(name)
    for dep in e.depends_on:
        ok, msg = models.verify(dep)
        if not ok:
            raise FileNotFoundError(f"{name} needs zoo model {dep!r}: {msg}")
    recipe = importlib.import_module(e.recipe)
    result = recipe.train(e.path, seed=seed, progress=progress)
    models.record_hashes(name)
    log.info("trained %s: %s", name, {k: v for k, v in result.items() if not isinstance(v, dict)})
    return result


def train_order(names: list[str] | None = None) -> list[str]:
    """Members in dependency order (dependencies first)."""
    names = names or models.list_models()
    done: list[str] = []

    def visit(n: str, stack: tuple[str, ...] = ()) -> None:
        if n in done:
            return
        if n in stack:
            raise ValueError(f"zoo dependency cycle: {' -> '.join((*stack, n))}")
        for d in models.entry(n).depends_on:
            visit(d, (*stack, n))
        done.append(n)

    for n in names:
        visit(n)
    return done
