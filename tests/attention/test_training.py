"""Stage-1 alignment and stage-2 fine-tuning through diffkit.train.fit on a tiny Wan model."""

import torch
from _wan_tiny import WAN as WAN_BASE  # conftest.py puts this folder on sys.path

from diffkit.attention import (
    AlignmentObjective,
    DensityAnneal,
    FinetuneObjective,
    RoPeSLRConfig,
    apply_ropeslr_,
    freeze_backbone_,
    ropeslr_parameters,
)
from diffkit.train import TrainConfig, fit

WAN = {**WAN_BASE, "in_channels": 1, "out_channels": 1}


class Videos(torch.utils.data.Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        base = torch.randn(n, 1, 4, 1, 1, generator=g)
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        self.x = torch.tanh(base * (yy + xx)[None, None, None] / 8)  # smooth, structured

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return {"x": self.x[idx]}


def make_inputs(model, batch, ctx):
    x0 = batch["x"]
    noise = ctx.randn(*x0.shape[1:])
    t = ctx.rand(salt=1).flatten()
    tt = t.view(-1, 1, 1, 1, 1)
    kwargs = {
        "hidden_states": (1 - tt) * x0 + tt * noise,
        "timestep": t * 1000,
        "encoder_hidden_states": torch.zeros(len(x0), 1, 16),
    }
    return kwargs, x0, noise, t


def _model():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    m = WanTransformer3DModel(**WAN)
    apply_ropeslr_(m, RoPeSLRConfig(density=0.25, block_size=16, tile=(2, 2, 4), rank=12))
    return m


def test_alignment_trains_only_new_parameters_and_lowers_the_loss(tmp_path):
    m = _model()
    n = freeze_backbone_(m)
    new = {id(p) for p in ropeslr_parameters(m)}
    assert n == sum(p.numel() for p in ropeslr_parameters(m)) > 0
    before = {k: v.clone() for k, v in m.state_dict().items()}
    obj = AlignmentObjective(make_inputs)
    cfg = TrainConfig(steps=30, batch_size=2, lr=1e-2, log_every=1, resume=False)
    fit(obj, m, Videos(), cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    import json

    losses = [json.loads(x)["loss"] for x in lines]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    names = {id(p): n for n, p in m.named_parameters()}
    for name, p in m.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if id(p) in new:
            assert changed, f"{name} did not change"  # every new parameter is used (issue 20)
        else:
            assert not changed, f"frozen {name} changed"
    assert names


def test_finetune_distill_with_density_annealing(tmp_path):
    m = _model()
    anneal = DensityAnneal(start=0.5, end=0.25, steps=2)
    obj = FinetuneObjective(make_inputs, target="distill", aux_weight=0.1, anneal=anneal)
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1, resume=False)
    res = fit(obj, m, Videos(), cfg, tmp_path)
    assert res.metrics["density"] == 0.25
    assert "aux_layer_rel_mse" in res.metrics and res.metrics["main"] >= 0
    assert anneal.at(0) == 0.5 and anneal.at(1) == 0.375 and anneal.at(5) == 0.25


def test_finetune_flow_target_runs(tmp_path):
    m = _model()
    obj = FinetuneObjective(make_inputs, target="flow", aux_weight=0.0)
    res = fit(obj, m, Videos(), TrainConfig(steps=1, batch_size=2, resume=False), tmp_path)
    assert res.metrics["loss"] > 0
