"""The align benchmark's pieces (benchmarks/align.py, benchmarks/_align_report.py): beta
calibration, the run order, one short training run, and the report generated from a results
folder (statistics, claim verdicts, the README/docs block)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _align_report as rep  # noqa: E402

_spec = importlib.util.spec_from_file_location("_bench_align", BENCH / "align.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_calibrated_beta_puts_beta_times_median_std_on_target():
    assert bench.calibrated_beta([0.1, 0.3, 0.2], 4.0) == pytest.approx(4.0 / 0.2)
    assert bench.calibrated_beta([0.1, 0.2, 0.3, 0.4], 2.0) == pytest.approx(2.0 / 0.25)
    with pytest.raises(ValueError, match="positive"):
        bench.calibrated_beta([0.1, 0.0], 4.0)
    with pytest.raises(ValueError, match="target"):
        bench.calibrated_beta([0.1], -1.0)


def test_run_order_covers_the_grid_once_one_complete_lr_first():
    grid = {"lrs": [3e-5, 1e-4, 3e-4, 1e-3], "seeds": 5}
    order = bench.run_order(grid)
    n_arms = len(bench.ARMS)
    assert len(order) == len(set(order)) == 4 * 5 * n_arms
    core = order[: 3 * len(bench.CORE_ARMS)]
    assert {(a, s) for a, _, s in core} == {(a, s) for a in bench.CORE_ARMS for s in range(3)}
    first = order[: 3 * n_arms]
    assert {lr for _, lr, _ in first} == {3e-5}
    assert {(a, s) for a, _, s in first} == {(a, s) for a in bench.ARMS for s in range(3)}
    three_lrs = bench.run_order({"lrs": [1e-4, 1e-3, 1e-2], "seeds": 3})
    assert len(three_lrs) == len(set(three_lrs)) == 3 * 3 * n_arms


def test_normalised_weight():
    assert bench.normalised_weight("sigmoid", 50.0, 200.0) == pytest.approx(0.5)
    assert bench.normalised_weight("linear", 0.3, 200.0) == 0.3


@pytest.mark.slow  # ~10 s alone, ~50 s on a loaded 2-core machine
def test_train_run_short(tmp_path):
    """A few steps of every loss kind through the package's objective produce the curve keys."""
    from diffkit.align.toy import PairDataset, make_preference_pairs
    from diffkit.data import load_digits
    from diffkit.models import digits_unet

    digits_unet.save_dir(digits_unet.build(bench.BASE_CONFIG), tmp_path / "base")
    wrapper = digits_unet.load_dir(tmp_path / "base").eval()
    grid = {**bench.default_grid(), "steps": 4, "eval_every": 2, "batch": 4}
    grid.update(eval_per_class=1, sampler_steps=2)
    tr = load_digits("train", size=bench.SIZE)
    pairs = make_preference_pairs(tr.images, tr.labels, bench.ink_patterns(), 64, seed=0)
    data = PairDataset(pairs, wrapper.cond)
    ev = bench.Evaluator(wrapper, grid)
    assert ev(wrapper.model)["reward_gain"] == 0.0  # the base against itself
    for loss, ref in (("linear", "ema0.9"), ("sigmoid", "frozen"), ("linear_pure", "frozen")):
        r = bench.train_run(wrapper, data, ev, grid, loss, ref, 10.0, 1e-3, seed=0)
        assert [c["step"] for c in r["curve"]] == [0, 2, 4]
        last = r["final"]
        for k in ("reward_gain", "drift", "heldout_implicit_acc", "train_beta_margin_std",
                  "train_weight_norm", "param_dist_to_ref"):  # fmt: skip
            assert math.isfinite(last[k]), k
        assert last["drift"] != 0.0  # the policy moved
        assert ("train_clip_low_frac" in last) == (loss == "linear")


# ----------------------------------------------------------------------------- report
def _curve(gains, drifts):
    return [
        {"step": 100 * i, "reward_gain": g, "drift": d, "win_rate": 0.5,
         "heldout_implicit_acc": 0.6, "train_beta_margin_std": 4.0, "train_weight_norm": 0.3}
        for i, (g, d) in enumerate(zip(gains, drifts))
    ]  # fmt: skip


def _results(tmp_path: Path) -> Path:
    """A tiny results folder: linear+ema0.99 climbs steadily, sigmoid+frozen stops at half-way
    (at the same drift), for 3 seeds and one LR; plus a null arm."""
    setup = {
        "grid": {**bench.default_grid(), "lrs": [1e-3], "seeds": 3, "steps": 200},
        "arms": {k: list(v) for k, v in bench.ARMS.items()},
        "betas": {"0.001": {"frozen": 10.0, "ema0.99": 20.0}},
        "base_reward": -1.0,
        "data_reward_std": 0.5,
        "params": 1234,
        "machine": {"cpu_capability": "test"},
    }
    (tmp_path / "align_setup.json").write_text(json.dumps(setup))
    lines = []
    for seed in range(3):
        e = 0.01 * seed
        arms = {
            "linear+ema0.99": ([0.0, 0.2 + e, 0.4 + e], [0.0, 0.1, 0.2]),
            "sigmoid+frozen": ([0.0, 0.2 + e, 0.2 + e], [0.0, 0.1, 0.2]),
            "null(linear+ema0.99)": ([0.0, 0.0 + e, -0.01], [0.0, 0.3, 0.6]),
        }
        for arm, (g, d) in arms.items():
            curve = _curve(g, d)
            rec = {"arm": arm, "lr": 1e-3, "seed": seed, "beta": 10.0, "steps": 200}
            rec.update(curve=curve, final=curve[-1], train_seconds=1.0, loadavg_1min=[1.0, 1.0])
            lines.append(json.dumps(rec))
    (tmp_path / "align_runs_0.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_summary_statistics(tmp_path):
    results = rep.collect(_results(tmp_path))
    rows = {(r["arm"], r["lr"]): r for r in rep.summarize(results)}
    lin = rows[("linear+ema0.99", 1e-3)]
    assert lin["seeds"] == 3
    m, h = lin["reward_gain"]  # 0.40, 0.41, 0.42: sd 0.01, t(2) = 4.303
    assert m == pytest.approx(0.41)
    assert h == pytest.approx(4.303 * 0.01 / math.sqrt(3), rel=1e-6)
    assert rows[("sigmoid+frozen", 1e-3)]["late_gain"][0] == pytest.approx(0.0)
    assert lin["late_gain"][0] == pytest.approx(0.2)


def test_frontier_is_best_gain_within_budget_along_the_path():
    path = [(0.0, 0.0), (0.1, 0.3), (0.2, 0.25), (0.5, 0.6)]
    assert rep.frontier([path], 0.15) == 0.3
    assert rep.frontier([path], 0.05) == pytest.approx(0.15)  # half-way to the first checkpoint
    assert rep.frontier([path], 0.35) == pytest.approx(0.425)  # half-way from 0.2 to 0.5
    assert rep.frontier([path], 1.0) == 0.6
    # a path starts at the base (0, 0) even when its record does not list it
    assert rep.frontier([[(0.4, 0.9)]], 0.1) == pytest.approx(0.225)
    # several runs (LRs) of one seed: the best of them; a run that drifts back counts too
    assert rep.frontier([[(0.4, 0.9)], [(0.2, 0.1), (0.05, 0.5)]], 0.1) == pytest.approx(0.5)
    assert rep.frontier([[(0.4, -0.2)]], 0.3) == 0.0  # never worse than the base


def test_claim_verdicts_follow_the_numbers(tmp_path):
    results = rep.collect(_results(tmp_path))
    rows = rep.summarize(results)
    cl = {c["claim"]: c for c in rep.claims(results, rows)}
    plateau = [c for k, c in cl.items() if k.startswith("sigmoid + frozen plateaus")][0]
    improving = [c for k, c in cl.items() if k.startswith("linear + EMA")][0]
    assert plateau["verdict"].startswith("holds at 1 of 1")
    assert improving["verdict"].startswith("holds at 1 of 1")
    matched = [c for k, c in cl.items() if "Diffusion-DPO (frozen)" in k][0]
    # budgets 0.05, 0.1, 0.2 (the common reach): equal up to 0.1, then 0.41 against 0.21
    assert matched["verdict"].startswith("linear+ema0.99 higher at 1 of 3")
    # arms that did not run are reported as untested, not as a verdict
    untested = [c for k, c in cl.items() if "EMA 0.99 vs frozen, linear" in k][0]
    assert untested["verdict"].startswith("not tested")


def test_single_seed_gives_point_estimates_not_verdicts(tmp_path):
    results = rep.collect(_results(tmp_path))
    results["runs"] = [r for r in results["runs"] if r["seed"] == 0]
    cl = rep.claims(results, rep.summarize(results))
    assert all(c["verdict"].startswith(("untested, 1 seed", "not tested")) for c in cl), [
        c["verdict"] for c in cl
    ]
    matched = [c for c in cl if "Diffusion-DPO (frozen)" in c["claim"]][0]
    assert "linear+ema0.99 higher at 1 of 3" in matched["verdict"]


def test_claim_verdict_not_distinguishable_on_equal_arms(tmp_path):
    results = rep.collect(_results(tmp_path))
    for r in results["runs"]:
        if r["arm"] == "sigmoid+frozen":  # make it equal to linear+ema0.99
            twin = next(
                x
                for x in results["runs"]
                if x["arm"] == "linear+ema0.99" and x["seed"] == r["seed"]
            )
            r["curve"], r["final"] = twin["curve"], twin["final"]
    cl = rep.claims(results, rep.summarize(results))
    matched = [c for c in cl if "Diffusion-DPO (frozen)" in c["claim"]][0]
    assert matched["verdict"].startswith("not distinguishable")


def test_generated_block_is_the_same_in_readme_and_docs(tmp_path):
    results = rep.collect(_results(tmp_path))
    docs, readme = tmp_path / "docs.md", tmp_path / "README.md"
    docs.write_text(f"# docs\n\n{rep.BEGIN}\nOLD-TEXT\n{rep.END}\n\ntail\n")
    readme.write_text(f"intro\n{rep.BEGIN}\n{rep.END}\nend\n")
    block = rep.write_all(results, tmp_path, docs=docs, readme=readme)
    for path in (docs, readme):
        text = path.read_text()
        assert block in text and "OLD-TEXT" not in text
    assert docs.read_text().endswith("tail\n") and readme.read_text().startswith("intro\n")
    assert "linear+ema0.99" in block and "9 runs of" in block
    assert (tmp_path / "align.md").exists() and (tmp_path / "align_pareto.png").exists()
    with pytest.raises(ValueError, match="markers"):
        rep.replace_block("no markers here", block)


def test_memory_table_reports_each_strategy_against_plain():
    row = {"params_M": 12.85, "trainable_M": 12.8, "rss_after_model_MB": 575.0}
    mem = {
        "rows": [
            {"strategy": "plain", **row, "peak_rss_MB": 779.0, "training_MB": 204.0},
            {"strategy": "frozen", **row, "peak_rss_MB": 832.0, "training_MB": 257.0},
            {"strategy": "ema", "error": "boom"},
        ]
    }
    lines = rep.memory_table(mem)
    assert lines[2].endswith("| 204.0 | +0.0 |") and lines[3].endswith("| 257.0 | +53.0 |")
    assert "error" in lines[4]
    assert rep.memory_table(None) == ["(memory probe not run)"]


def test_matched_drift_only_within_both_arms_reach(tmp_path):
    results = rep.collect(_results(tmp_path))
    for r in results["runs"]:
        if r["arm"] == "sigmoid+frozen":  # reaches only drift 0.02
            for c in r["curve"]:
                c["drift"] = c["drift"] / 10
    assert rep.compare_at_drift(results, "linear+ema0.99", "sigmoid+frozen", [0.2]) == []
    (d,) = rep.compare_at_drift(results, "linear+ema0.99", "sigmoid+frozen", [0.005])
    # interpolated from the base: sigmoid is half-way to its first checkpoint (drift 0.01, gain
    # 0.2 + e), linear a twentieth of the way to its (0.1, 0.2 + e); e = 0, 0.01, 0.02 over seeds
    assert d["a"] == pytest.approx(0.05 * 0.21)
    assert d["b"] == pytest.approx(0.5 * 0.21)


def test_default_budgets_stop_at_a_doubled_heldout_error(tmp_path):
    results = rep.collect(_results(tmp_path))
    for r in results["runs"]:  # every arm drifts 100x further: common reach 20
        for c in r["curve"]:
            c["drift"] = c["drift"] * 100
    diffs = rep.compare_at_drift(results, "linear+ema0.99", "sigmoid+frozen")
    assert [d["budget"] for d in diffs] == pytest.approx([0.25, 0.5, 1.0])
    assert rep.MAX_BUDGET == 1.0
