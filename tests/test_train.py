"""The training loop: convergence, accumulation equivalence, EMA, non-finite handling, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from diffkit.core import LossOutput
from diffkit.core.ema import EMA
from diffkit.train import NonFiniteError, TrainConfig, fit, latest_checkpoint


class Regression:
    """y = x @ w_true + noise; deterministic objective (noise from ctx.randn)."""

    def __init__(self, n: int = 64, d: int = 4):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.arange(1.0, d + 1)[:, None]

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return {"x": self.x[idx], "y": self.y[idx]}


def mse(model, batch, ctx):
    pred = model(batch["x"] + 0.01 * ctx.randn(batch["x"].shape[1]))
    loss = (pred - batch["y"]).pow(2).mean()
    return LossOutput(loss, {"abs_err": (pred - batch["y"]).abs().mean().detach()})


def make_model():
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def test_fit_converges_and_logs(tmp_path):
    model = make_model()
    res = fit(
        mse,
        model,
        Regression(),
        TrainConfig(steps=200, batch_size=16, lr=0.05, log_every=50),
        tmp_path,
    )
    assert res.metrics["loss"] < 1e-2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [50, 100, 150, 200]
    assert {"loss", "abs_err", "lr", "grad_norm"} <= set(lines[-1])
    assert latest_checkpoint(tmp_path).name == "step_00000200"


def test_grad_accum_matches_full_batch(tmp_path):
    a, b = make_model(), make_model()
    cfg = dict(steps=5, batch_size=16, lr=0.05, log_every=1, grad_clip=0.0)
    fit(mse, a, Regression(), TrainConfig(**cfg), tmp_path / "a")
    fit(mse, b, Regression(), TrainConfig(**cfg, grad_accum=4), tmp_path / "b")
    # A 16-row mean vs four 4-row means: equal up to fp32 round-off of the sums (~1e-7 relative),
    # which Adam carries into the update at that relative size (the gradients here are far from 0).
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_ema_updates_once_per_optimizer_step(tmp_path):
    """Under accumulation the EMA steps once per optimizer step, toward that step's weights."""
    model = make_model()
    ema = EMA(model, decay=0.9)
    expected = {k: v.detach().clone().float() for k, v in model.named_parameters()}
    per_micro = {k: v.clone() for k, v in expected.items()}

    def follow(step, logs):  # the EMA recomputed by hand from the weights after each step
        for k, p in model.named_parameters():
            expected[k].lerp_(p.detach().float(), 1.0 - 0.9)
            for _ in range(3):  # what an EMA stepped per micro-batch would hold instead
                per_micro[k].lerp_(p.detach().float(), 1.0 - 0.9)

    fit(
        mse,
        model,
        Regression(),
        TrainConfig(steps=6, batch_size=12, grad_accum=3),
        tmp_path,
        ema=ema,
        callbacks=[follow],
    )
    assert ema.num_updates == 6
    got = dict(ema.module.named_parameters())
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
        assert not torch.equal(got[k], per_micro[k])
    assert not torch.equal(got["weight"], model.weight.detach())  # an average, not a copy


def test_nonfinite_steps_skipped_then_abort(tmp_path):
    calls = {"n": 0}

    def sometimes_nan(model, batch, ctx):
        calls["n"] += 1
        out = mse(model, batch, ctx)
        if ctx.step in (2, 3):
            return LossOutput(out.loss * float("nan"), out.metrics)
        return out

    model = make_model()
    res = fit(
        sometimes_nan, model, Regression(), TrainConfig(steps=6, batch_size=8), tmp_path / "a"
    )
    assert res.skipped_nonfinite == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())

    def always_nan(model, batch, ctx):
        return LossOutput(torch.tensor(float("nan"), requires_grad=True))

    with pytest.raises(NonFiniteError, match="3 consecutive"):
        fit(
            always_nan,
            make_model(),
            Regression(),
            TrainConfig(steps=10, batch_size=8, max_consecutive_nonfinite=3),
            tmp_path / "b",
        )


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="batch_size=10 must be divisible"):
        fit(mse, make_model(), Regression(), TrainConfig(batch_size=10, grad_accum=3), "/tmp/never")


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_train import Regression, make_model, mse
    from diffkit.train import TrainConfig, fit
    from diffkit.core.ema import EMA

    def die(step, logs):
        if step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

    model = make_model()
    fit(mse, model, Regression(), TrainConfig(steps=10, batch_size=8, lr=0.05, checkpoint_every=5, ema_decay=0.9),
        {out!r}, callbacks=[die])
    """
)


def test_kill_and_resume_is_bit_identical(tmp_path):
    cfg = TrainConfig(steps=10, batch_size=8, lr=0.05, checkpoint_every=5, ema_decay=0.9)
    straight = make_model()
    ema_s = EMA(straight, 0.9)
    fit(mse, straight, Regression(), cfg, tmp_path / "straight", ema=ema_s)

    out = tmp_path / "killed"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert latest_checkpoint(out).name == "step_00000005"

    resumed = make_model()
    ema_r = EMA(resumed, 0.9)
    res = fit(mse, resumed, Regression(), cfg, out, ema=ema_r)
    assert res.step == 10
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema_s.module.state_dict().values(), ema_r.module.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.distributed
def test_torchrun_two_ranks_equals_single_process(tmp_path, single_vs_torchrun):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from test_train import Regression, make_model, mse
        from diffkit.train import TrainConfig, fit
        from diffkit.core.io import save_tensors
        import os
        import torch.distributed as dist
        model = make_model()
        # One process accumulates the two 8-row micro-batches the two ranks see: exact by construction.
        accum = 1 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 2
        fit(mse, model, Regression(), TrainConfig(steps=8, batch_size=16, grad_accum=accum, lr=0.05, grad_clip=0.0), sys.argv[1])
        if not dist.is_initialized() or dist.get_rank() == 0:
            save_tensors(sys.argv[1] + "/final.safetensors", model.state_dict())
        """
        )
    )
    a, b = single_vs_torchrun(script)
    assert set(a) == set(b)
    for k in a:  # g0/2 + g1/2 == (g0 + g1)/2 in floating point: bit-identical on every CPU kind
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
