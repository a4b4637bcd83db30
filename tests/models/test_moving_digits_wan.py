import pytest
import torch

from diffkit import models
from diffkit.data import make_moving_digits
from diffkit.models import moving_digits_wan as mdw
from diffkit.zoo.moving_digits_wan import tokens_per_video, video_config


def _tiny():
    torch.manual_seed(0)
    return mdw.build({**mdw.DEFAULT_CONFIG, "num_layers": 1}).eval()


def test_build_is_a_real_wan_with_at_least_1024_tokens_per_video():
    m = mdw.build(mdw.DEFAULT_CONFIG)
    assert type(m).__name__ == "WanTransformer3DModel"
    assert tokens_per_video(mdw.DEFAULT_CONFIG) >= 1024
    v = mdw.VIDEO
    x = torch.randn(1, 1, v["num_frames"], v["size"], v["size"])
    out = m(x, torch.tensor([500.0]), mdw.condition(torch.tensor([3])), return_dict=False)[0]
    assert out.shape == x.shape


def test_condition_is_one_hot_with_a_null_class():
    c = mdw.condition(torch.tensor([0, mdw.NULL_CLASS]))
    k = mdw.TEXT_TOKENS
    assert c.shape == (2, k, mdw.NUM_CLASSES + k)
    assert (c[0, :, 0] == 1).all() and (c[1, :, mdw.NULL_CLASS] == 1).all()
    # each token also carries its own index, so the k tokens of one class differ
    assert torch.equal(c[0, :, mdw.NUM_CLASSES :], torch.eye(k))
    assert (c.sum(-1) == 2).all()
    legacy = mdw.condition(torch.tensor([3]), 16)  # the first zoo model's single one-hot token
    assert legacy.shape == (1, 1, 16) and legacy[0, 0, 3] == 1 and legacy.sum() == 1
    with pytest.raises(ValueError, match="text_dim"):
        mdw.condition(torch.tensor([3]), 8)


def test_crop_digits_recovers_the_pasted_digit():
    d = make_moving_digits(3, video_config("test"), seed=0)
    frames = d.videos[:, 0]
    crops = mdw.crop_digits(frames)
    k = mdw.VIDEO["digit_size"]
    assert crops.shape == (3, 1, k, k)
    for i in range(3):
        y, x = d.trajectories[i, 0, 0].tolist()
        pasted = frames[i, :, y : y + k, x : x + k]
        # the digit may have blank margins: the crop holds all of its ink, maybe shifted
        assert abs(float((crops[i] + 1).sum() - (pasted + 1).sum())) < 1e-4


def test_displacement_measures_a_known_trajectory():
    ys, xs = [0, 2, 4, 7, 10], [16, 13, 10, 7, 4]  # steps of (2,-3), (2,-3), (3,-3), (3,-3)
    v = torch.full((1, 5, 1, 32, 32), -1.0)
    for f, (y, x) in enumerate(zip(ys, xs)):
        v[0, f, 0, y : y + 16, x : x + 16] = 1.0
    expected = (2 * 13**0.5 + 2 * 18**0.5) / 4
    assert mdw.displacement(v, 16).item() == pytest.approx(expected, rel=1e-6)
    assert mdw.displacement(v[:, :1].expand(1, 5, 1, 32, 32), 16).item() == 0.0


def test_evaluate_scores_real_videos_as_near_perfect():
    """Real videos, scored as if generated: the metrics must say "digits, consistent, moving"."""
    clf = models.load("digit-classifier")
    fake = make_moving_digits(40, video_config("test"), seed=5)
    real = make_moving_digits(40, video_config("test"), seed=6).videos
    floor = make_moving_digits(40, video_config("train"), seed=7).videos
    m = mdw.evaluate(fake.videos, fake.labels[:, 0], real, clf, floor_real=floor)
    assert m["frame_accuracy"] >= 0.95 and m["class_consistency"] >= 0.95
    assert m["real_displacement_p05"] <= m["displacement"] <= m["real_displacement_p95"]
    assert m["fid_over_floor"] < 3  # real videos meet the recipe's own FID target
    same = mdw.evaluate(fake.videos, fake.labels[:, 0], real, clf, floor_real=real)
    assert same["fid_real_floor"] == pytest.approx(0.0, abs=1e-6)  # same set: zero distance
    # shuffled labels: accuracy collapses to about chance while consistency is unchanged
    wrong = mdw.evaluate(fake.videos, (fake.labels[:, 0] + 1) % 10, real, clf)
    assert wrong["frame_accuracy"] < 0.1 and wrong["class_consistency"] == m["class_consistency"]


def test_sampler_is_deterministic_for_a_generator_and_in_range():
    m = _tiny()
    labels = torch.tensor([1, 7])
    a = mdw.sample(m, labels, steps=2, generator=torch.Generator().manual_seed(0))
    b = mdw.sample(m, labels, steps=2, generator=torch.Generator().manual_seed(0))
    c = mdw.sample(m, labels, steps=2, generator=torch.Generator().manual_seed(1))
    s = mdw.VIDEO["size"]
    assert a.shape == (2, mdw.VIDEO["num_frames"], 1, s, s)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_guided_sampler_step_is_classifier_free_guidance():
    """One Euler step from sigma=1 to 0 moves x by -(u + s (c - u)) for the batched 2B call."""
    m = _tiny()
    labels = torch.tensor([4])
    s = mdw.VIDEO["size"]
    x = torch.randn(1, 1, 2, s, s, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1000.0])
    with torch.no_grad():
        c = m(x, t, mdw.condition(labels), return_dict=False)[0]
        u = m(x, t, mdw.condition(torch.tensor([mdw.NULL_CLASS])), return_dict=False)[0]
    fn = mdw.velocity_fn(m, labels, mdw.FlowMatching(shift=1.0), cfg_scale=3.0)
    with torch.no_grad():
        v = fn(x, torch.tensor([1.0]))
    torch.testing.assert_close(v, u + 3.0 * (c - u), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 14: the shipped moving-digits-wan does not generate digits yet "
    "(frame accuracy 0.14 in its metrics.json, chance 0.10); remove this mark when it does",
)
def test_shipped_model_generates_the_requested_digits():
    """One sample per class, all frames scored: far above chance (0.1).

    80 frames at chance accuracy reach 0.3 with probability < 1e-6 (binomial tail), so passing
    means the model follows its class condition.
    """
    model = models.load("moving-digits-wan")
    labels = torch.arange(10)
    vids = mdw.sample(model, labels, steps=8, generator=torch.Generator().manual_seed(0))
    pred = models.load("digit-classifier").embed(mdw.classifier_crops(vids.flatten(0, 1)))[1]
    acc = (pred.view(10, -1) == labels[:, None]).float().mean()
    assert acc >= 0.3, acc
