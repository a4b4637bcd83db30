"""Tables and the reward-vs-drift Pareto plot for benchmarks/align.py."""

from __future__ import annotations

import statistics
from collections import defaultdict

from diffkit.core.machine import machine_line


def _ms(xs):
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return m, s


def summarize(results) -> list[dict]:
    rows = []
    for key, res in results["models"].items():
        groups = defaultdict(list)
        for r in res["runs"]:
            groups[(r["arm"], r["lr"])].append(r)
        for (arm, lr), rs in groups.items():
            row = {"model": key, "arm": arm, "lr": lr, "seeds": len(rs)}
            for k in ("reward_gain", "win_rate", "drift", "heldout_implicit_acc"):
                m, s = _ms([r[k] for r in rs])
                row[k] = f"{m:+.3f} ± {s:.3f}" if k in ("reward_gain", "drift") else f"{m:.3f}"
                row[f"_{k}"] = (m, s)
            clip = [r["train_last"].get("clip_low_frac", float("nan")) for r in rs]
            row["w_at_eta"] = f"{statistics.fmean(clip):.2f}" if "linear" in arm else "-"
            mid = [c for r in rs for c in r["curve"] if c["step"] != r["curve"][-1]["step"]]
            if mid:
                row["gain_mid->end"] = (
                    f"{statistics.fmean(c['reward_gain'] for c in mid):+.3f} -> "
                    f"{row['_reward_gain'][0]:+.3f}"
                )
            rows.append(row)
    return rows


def write_report(results, out_dir, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(results)
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, key in zip(axes[0], models):
        arms = sorted({r["arm"] for r in rows if r["model"] == key})
        for arm in arms:
            pts = sorted(
                (r["lr"], r["_drift"], r["_reward_gain"])
                for r in rows
                if r["model"] == key and r["arm"] == arm
            )
            xs = [p[1][0] for p in pts]
            ys = [p[2][0] for p in pts]
            ax.errorbar(
                xs,
                ys,
                xerr=[p[1][1] for p in pts],
                yerr=[p[2][1] for p in pts],
                marker="o",
                capsize=3,
                label=arm,
                linestyle=":" if arm.startswith("null") else "-",
            )
            for (lr, _, _), x, y in zip(pts, xs, ys):
                ax.annotate(
                    f"{lr:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xlabel("drift: held-out denoising MSE / base - 1")
        ax.set_ylabel("reward gain over base (mean ± std over seeds)")
        ax.set_title(
            f"{results['models'][key]['member']} (beta={results['models'][key]['beta']:.3g})"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}_pareto.png", dpi=120)
    plt.close(fig)

    cols = [
        "model",
        "arm",
        "lr",
        "seeds",
        "reward_gain",
        "win_rate",
        "drift",
        "heldout_implicit_acc",
        "w_at_eta",
        "gain_mid->end",
    ]
    lines = [
        f"# align benchmark ({name})",
        "",
        f"{machine_line(results['machine']) if 'machine' in results else 'CPU kind not recorded'}, "
        f"1 torch thread; load average {results['loadavg_start']} at start, "
        f"{results['loadavg_end']} at end; {results['total_seconds']} s total.",
        f"Config: {results['config']}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    for res in results["models"].values():
        lines += [
            "",
            f"## {res['member']}: step time and memory per reference strategy",
            "",
            "| strategy | step ms (median) | vs plain | reference extra MB | trainable |",
            "|---|---|---|---|---|",
        ]
        for t in res["timing"]:
            lines.append(
                f"| {t.get('strategy')} | {t.get('step_ms')} | {t.get('vs_plain')} | "
                f"{t.get('reference_extra_MB')} | {t.get('trainable_params')} |"
            )
        lines += ["", "| strategy | peak RSS MB | RSS after load MB |", "|---|---|---|"]
        for m in res["memory"]:
            lines.append(
                f"| {m['strategy']} | {m.get('peak_rss_MB', m.get('error', ''))} | "
                f"{m.get('rss_after_load_MB', '')} |"
            )
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
