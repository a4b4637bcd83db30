"""RoPeSLR under torch.compile / torch.export (issue 20): one graph, no recompiles across layers or
denoising steps, each repeated block compiled once, exportable.

Graphs are counted with dynamo's ``CompileCounter`` backend (it runs the captured graph eagerly,
so no inductor build and the outputs are the eager ops'); ``error_on_recompile`` and
``fail_on_recompile_limit_hit`` turn any recompile into an error. The checks mirror diffusers'
``TorchCompileTesterMixin`` (recompilation and graph break, repeated blocks, export).
"""

import pytest
import torch
import torch._dynamo.testing as dynamo_testing
from test_processors import HUNYUAN  # conftest.py puts this folder on sys.path

from diffkit.attention import RoPeSLRConfig, apply_ropeslr_, ropeslr_state

SPARSE = dict(density=0.25, block_size=16, rank=12)
STEPS = (900.0, 500.0, 100.0, 900.0, 500.0)  # two sampling runs: the counter resets at 900


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _wan(path, cfg: dict | None):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel.from_pretrained(path).eval()
    if cfg is not None:
        apply_ropeslr_(m, RoPeSLRConfig(**{**SPARSE, **cfg}))
    return m


def _wan_inputs(t: float) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(2, 4, 4, 16, 16, generator=g),
        timestep=torch.full((2,), t),
        encoder_hidden_states=torch.randn(2, 3, 16, generator=g),
        return_dict=False,
    )


def _hunyuan(cfg: dict | None):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    m = HunyuanVideoTransformer3DModel(**HUNYUAN).eval()
    if cfg is not None:
        apply_ropeslr_(m, RoPeSLRConfig(**{**SPARSE, **cfg}))
    return m


def _hunyuan_inputs(t: float) -> dict:
    g = torch.Generator().manual_seed(2)
    return dict(
        hidden_states=torch.randn(2, 4, 4, 16, 16, generator=g),
        timestep=torch.full((2,), t),
        encoder_hidden_states=torch.randn(2, 5, 16, generator=g),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool(),
        pooled_projections=torch.randn(2, 8, generator=g),
        return_dict=False,
    )


def _build(kind, wan_dir, cfg):
    if kind == "wan":
        return _wan(wan_dir, cfg), _wan_inputs
    return _hunyuan(cfg), _hunyuan_inputs


def _run(model, inputs, steps=STEPS):
    with torch.no_grad():
        return [model(**inputs(t))[0] for t in steps]


# Tolerance: the captured graph runs the eager ops, except the mass merge, which takes its
# max-stabilised form under tracing (same value, different rounding: a few fp32 ulps of O(1)).
TOL = 1e-5


SLOW = pytest.mark.slow  # ~10 s each: dynamo traces every layer


@pytest.mark.parametrize("kind", ["wan", pytest.param("hunyuan", marks=SLOW)])
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        pytest.param(dict(dense_first_layers=1, dense_heads=(0,)), marks=SLOW),
        pytest.param(
            dict(merge="mass", feature_map="elu1", mass_lse="estimate", local_radius=1),
            marks=SLOW,
        ),
    ],
    ids=["default", "dense-layer-and-head", "mass-estimate-radius"],
)
def test_full_model_compiles_to_one_graph_without_recompiles(kind, wan_dir, cfg):
    """torch.compile(model, fullgraph=True): one graph for all layers and all denoising steps."""
    model, inputs = _build(kind, wan_dir, cfg)
    ref = _run(model, inputs)
    counter = dynamo_testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = _run(compiled, inputs)
    assert counter.frame_count == 1
    for o, r in zip(out, ref):
        assert (o - r).abs().max() < TOL


@pytest.mark.parametrize("kind", ["wan", pytest.param("hunyuan", marks=SLOW)])
def test_dense_first_steps_compile_without_recompiling_at_the_switch(kind, wan_dir):
    """The dense-first-steps schedule is a tensor under full-model compile: the hook's counter is
    one small graph, the model one graph with a torch.cond, and neither recompiles when the
    schedule switches from dense to sparse or when a new sampling run starts."""
    model, inputs = _build(kind, wan_dir, dict(dense_first_steps=2))
    ref = _run(model, inputs)
    st = ropeslr_state(model)
    st.mode = "dense"
    dense = _run(model, inputs)
    st.mode = "sparse"
    # eager: steps 0, 1 dense, step 2 sparse; then a new run (900 > 100) is dense again
    assert [(r - d).abs().max() < TOL for r, d in zip(ref, dense)] == [1, 1, 0, 1, 1]
    model._ropeslr_last_t.fill_(torch.tensor(float("-inf")).view(torch.int32).item())
    counter = dynamo_testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = _run(compiled, inputs)
    assert counter.frame_count == 2  # the hook's counter and the model
    assert int(model._ropeslr_step) == 1  # the traced counter ran: step 1 of the second run
    for o, r in zip(out, ref):
        assert (o - r).abs().max() < TOL


@pytest.mark.parametrize("kind", ["wan", pytest.param("hunyuan", marks=SLOW)])
def test_repeated_blocks_compile_once_per_block_class(kind, wan_dir):
    """compile_repeated_blocks(fullgraph=True): as many graphs as without RoPeSLR (one per block
    class), none recompiled across layers or steps (recompile_limit=1, as diffusers' test)."""
    counts = []
    for cfg in (None, {}):
        torch._dynamo.reset()
        model, inputs = _build(kind, wan_dir, cfg)
        ref = _run(model, inputs, STEPS[:3])
        counter = dynamo_testing.CompileCounter()
        model.compile_repeated_blocks(fullgraph=True, backend=counter)
        patch = dict(recompile_limit=1, fail_on_recompile_limit_hit=True)
        with torch._dynamo.config.patch(**patch):
            out = _run(model, inputs, STEPS[:3])
        for o, r in zip(out, ref):
            assert (o - r).abs().max() < TOL
        counts.append(counter.frame_count)
    assert counts[1] == counts[0] >= 1


def test_repeated_blocks_with_dense_first_steps_hold_two_variants(wan_dir):
    """With compiled blocks the hook runs eagerly and the schedule is a Python bool: each block
    holds one variant per value (dense, sparse), so a second sampling run compiles nothing."""
    model = _wan(wan_dir, dict(dense_first_steps=1))
    ref = _run(model, _wan_inputs)
    counter = dynamo_testing.CompileCounter()
    model.compile_repeated_blocks(fullgraph=True, backend=counter)
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        out = _run(model, _wan_inputs)
    assert counter.frame_count == 2
    for o, r in zip(out, ref):
        assert (o - r).abs().max() < TOL


@pytest.mark.slow
def test_compiled_alignment_backward_matches_eager(wan_dir):
    """Stage-1 alignment (issue 20 item 2): forward + backward through the compiled model, one
    graph for steps at different timesteps, gradients equal to eager ones."""
    from diffkit.attention import freeze_backbone_

    def grads(model, forward):
        st = ropeslr_state(model)
        out = []
        for t in (700.0, 300.0):
            model.zero_grad(set_to_none=True)
            st.mode, st.losses = "align", []
            forward(**_wan_inputs(t))
            st.mode = "sparse"
            torch.stack(st.losses).mean().backward()
            out.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        return out

    model = _wan(wan_dir, {})
    freeze_backbone_(model)
    ref = grads(model, model)
    counter = dynamo_testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = grads(model, compiled)
    assert counter.frame_count == 1
    for g_ref, g in zip(ref, got):
        assert g_ref.keys() == g.keys() and len(g) > 0
        for n in g:
            scale = g_ref[n].abs().max().clamp(min=1e-12)
            assert (g[n] - g_ref[n]).abs().max() / scale < 1e-4, n


@pytest.mark.parametrize("kind", ["wan", pytest.param("hunyuan", marks=SLOW)])
def test_export_matches_eager(kind, wan_dir):
    """torch.export (default non-strict) of a RoPeSLR model; the exported program equals eager."""
    model, inputs = _build(kind, wan_dir, {})
    ref = _run(model, inputs, STEPS[:2])
    program = torch.export.export(model, args=(), kwargs=inputs(STEPS[0]))
    exported = program.module()
    for o, r in zip(_run(exported, inputs, STEPS[:2]), ref):
        assert (o - r).abs().max() < TOL


@pytest.mark.slow
def test_strict_export_carries_the_dense_first_steps_counter(wan_dir):
    """Strict export keeps the traced step counter (buffers mutated in the program) and the
    torch.cond; the default non-strict export says to use strict=True."""
    model = _wan(wan_dir, dict(dense_first_steps=1))
    ref = _run(model, _wan_inputs)
    with pytest.raises(ValueError, match="strict=True"):
        torch.export.export(model, args=(), kwargs=_wan_inputs(STEPS[0]))
    model._ropeslr_last_t.fill_(torch.tensor(float("-inf")).view(torch.int32).item())
    program = torch.export.export(model, args=(), kwargs=_wan_inputs(STEPS[0]), strict=True)
    exported = program.module()
    for o, r in zip(_run(exported, _wan_inputs), ref):
        assert (o - r).abs().max() < TOL


@pytest.mark.slow
def test_compiled_stage2_with_density_annealing_compiles_a_few_variants(wan_dir):
    """Stage 2 under compile: the dense teacher pass and the "aux" pass are one variant each;
    annealing the density (here through k = 8 -> 5 selected blocks of 16) costs one more compile
    (dynamo makes the float symbolic on its first change), not one per step."""
    model = _wan(wan_dir, {}).train()
    st = ropeslr_state(model)
    counter = dynamo_testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for density in (0.5, 0.48, 0.46, 0.3, 0.26):
        st.density = density
        st.mode = "dense"
        with torch.no_grad():
            goal = compiled(**_wan_inputs(500.0))[0]
        st.mode, st.losses = "aux", []
        pred = compiled(**_wan_inputs(500.0))[0]
        st.mode = "sparse"
        model.zero_grad(set_to_none=True)
        loss = (pred - goal).pow(2).mean() + 0.1 * torch.stack(st.losses).mean()
        loss.backward()
        assert torch.isfinite(loss) and len(st.losses) == 2
        assert all(p.grad is not None for p in model.blocks[0].attn1.processor.parameters())
    assert counter.frame_count <= 3


@pytest.mark.slow
def test_aot_inductor_package_matches_eager(wan_dir, tmp_path):
    """As diffusers' test_compile_works_with_aot: export, AOTInductor package, load, run."""
    from torch._inductor.package import load_package

    model = _wan(wan_dir, {})
    ref = _run(model, _wan_inputs, STEPS[:1])[0]
    program = torch.export.export(model, args=(), kwargs=_wan_inputs(STEPS[0]))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "wan.pt2"))
    loaded = load_package(path, run_single_threaded=True)
    with torch.no_grad():
        out = loaded(**_wan_inputs(STEPS[0]))[0]
    assert (out - ref).abs().max() < TOL
