"""Run diffusers' own torch.compile tests of WanTransformer3DModel and HunyuanVideoTransformer3DModel
on CPU, without RoPeSLR and with RoPeSLR attached to every model the tests build (issue 20).

python scripts/run_diffusers_compile_tests.py --diffusers-src /tmp/dtests
python scripts/run_diffusers_compile_tests.py --diffusers-src /tmp/dtests --densities 1.0 0.5

``--diffusers-src`` is a checkout (or ``git archive``) of diffusers holding its ``tests/`` tree, of
the generation of the installed diffusers; nothing of it is copied here. The installed diffusers
is the one tested (the checkout's ``src/`` is not used).

Each setting runs pytest in a subprocess with a small plugin written by this script:

* the accelerator skip of ``TorchCompileTesterMixin`` (``require_accelerator`` /
  ``require_torch_accelerator``, decided when the test module is imported) is lifted by replacing
  those decorators with the identity before any test module is imported;
* with ``DIFFKIT_DTESTS_DENSITY`` set, the two model classes' ``__init__`` is wrapped so that
  :func:`diffkit.attention.apply_ropeslr_` runs right after construction (reference backend, a
  block and tile that fit the tests' tiny grids: Wan 2x8x8 = 128 tokens, HunyuanVideo 1x16x16 =
  256 tokens).

The result is a pass/fail table (Markdown on stdout, JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

FILES = (
    "tests/models/transformers/test_models_transformer_wan.py",
    "tests/models/transformers/test_models_transformer_hunyuan_video.py",
)
# The compile classes only: the GGUF compile class downloads a checkpoint.
CLASSES = ("TestWanTransformer3DCompile", "TestHunyuanVideoTransformerCompile")

PLUGIN = textwrap.dedent(
    '''
    """pytest plugin of scripts/run_diffusers_compile_tests.py (diffkit)."""
    import functools
    import json
    import os

    import tests.testing_utils as tu

    # Lift the accelerator requirement: these decorators are applied at import of the test
    # modules, which happens after this plugin is loaded.
    tu.require_accelerator = lambda test_case: test_case
    tu.require_torch_accelerator = lambda test_case: test_case

    if os.environ.get("DIFFKIT_DTESTS_NO_STREAMS"):
        # CPU has no streams: run the group-offloading tests with use_stream=False (a variant of
        # diffusers' test, labelled as such in the table).
        from diffusers import ModelMixin

        _offload = ModelMixin.enable_group_offload

        @functools.wraps(_offload)
        def enable_group_offload(self, *args, **kwargs):
            kwargs["use_stream"] = False
            kwargs.pop("non_blocking", None)
            return _offload(self, *args, **kwargs)

        ModelMixin.enable_group_offload = enable_group_offload

    _density = os.environ.get("DIFFKIT_DTESTS_DENSITY")
    if _density:
        from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

        from diffkit.attention import RoPeSLRConfig, apply_ropeslr_

        _cfg = RoPeSLRConfig(
            **{
                "backend": "reference",
                "block_size": 16,
                "tile": (1, 4, 4),
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in json.loads(os.environ.get("DIFFKIT_DTESTS_CONFIG", "{}")).items()
                },
                "density": float(_density),
            }
        )
        ATTACHED = []

        def _wrap(cls):
            init = cls.__init__

            @functools.wraps(init)
            def __init__(self, *args, **kwargs):
                init(self, *args, **kwargs)
                if type(self) is cls:
                    apply_ropeslr_(self, _cfg)
                    ATTACHED.append(cls.__name__)

            cls.__init__ = __init__

        _wrap(WanTransformer3DModel)
        _wrap(HunyuanVideoTransformer3DModel)

        def pytest_runtest_setup(item):
            ATTACHED.clear()

        def pytest_runtest_teardown(item):
            # A test that built a model must have had RoPeSLR attached to it.
            item.user_properties.append(("ropeslr_attached", len(ATTACHED)))
    '''
)


def _run(
    src: Path,
    density: float | None,
    config: dict,
    no_streams: bool,
    extra: list[str],
    workdir: Path,
) -> dict[str, dict]:
    plugin_dir = workdir / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "diffkit_dtests_plugin.py").write_text(PLUGIN)
    tag = "baseline" if density is None else f"d{density}"
    junit = workdir / f"{tag}.xml"
    env = dict(os.environ)
    here_src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(plugin_dir), str(src), str(here_src), env.get("PYTHONPATH", "")]
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env["DIFFUSERS_TEST_DEVICE"] = "cpu"
    env.pop("DIFFKIT_DTESTS_DENSITY", None)
    env["DIFFKIT_DTESTS_CONFIG"] = json.dumps(config)
    env.pop("DIFFKIT_DTESTS_NO_STREAMS", None)
    if no_streams:
        env["DIFFKIT_DTESTS_NO_STREAMS"] = "1"
    if density is not None:
        env["DIFFKIT_DTESTS_DENSITY"] = str(density)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "diffkit_dtests_plugin",
        "-k",
        " or ".join(CLASSES),
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
        *FILES,
        *extra,
    ]
    print(f"[{tag}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=src, env=env, check=False)
    return _parse(junit)


def _parse(junit: Path) -> dict[str, dict]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        status, why = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                status = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[kind]
                why = (el.get("message") or "").splitlines()[0][:120] if el.get("message") else ""
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out[name] = {"status": status, "why": why, "attached": props.get("ropeslr_attached")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--diffusers-src", type=Path, required=True, help="diffusers checkout")
    p.add_argument("--densities", type=float, nargs="*", default=[1.0, 0.5])
    p.add_argument("--no-baseline", action="store_true", help="skip the run without RoPeSLR")
    p.add_argument(
        "--config",
        type=json.loads,
        default={},
        help="RoPeSLRConfig overrides as JSON, e.g. '{\"dense_first_steps\": 1}' (tuples as lists)",
    )
    p.add_argument(
        "--no-streams",
        action="store_true",
        help="group offloading without streams (CPU has none; a variant of diffusers' test)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args()
    src = args.diffusers_src.resolve()
    if not all((src / f).is_file() for f in FILES):
        p.error(f"{src} does not hold diffusers' tests ({FILES[0]})")
    settings: list[float | None] = ([] if args.no_baseline else [None]) + list(args.densities)
    results = {}
    with tempfile.TemporaryDirectory(prefix="diffkit-dtests-") as tmp:
        for density in settings:
            label = "no RoPeSLR" if density is None else f"RoPeSLR density {density}"
            results[label] = _run(
                src, density, args.config, args.no_streams, args.pytest_args, Path(tmp)
            )
    names = sorted({n for r in results.values() for n in r})
    print("| test | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for n in names:
        cells = []
        for r in results.values():
            c = r.get(n)
            cell = "-" if c is None else c["status"]
            if c and c["status"] in ("FAILED", "ERROR") and c["why"]:
                cell += f" ({c['why'].split(':')[0]})"
            if c and c["attached"] == "0" and c["status"] == "passed":
                cell += " (no model built)"
            cells.append(cell)
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
