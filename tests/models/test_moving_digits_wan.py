import torch

from diffkit.data import make_moving_digits
from diffkit.models import moving_digits_wan as mdw
from diffkit.zoo.moving_digits_wan import video_config


def test_build_is_a_real_wan_with_2048_tokens_per_video():
    m = mdw.build(mdw.DEFAULT_CONFIG)
    assert type(m).__name__ == "WanTransformer3DModel"
    v = mdw.VIDEO
    p = mdw.DEFAULT_CONFIG["patch_size"]
    assert (v["num_frames"] // p[0]) * (v["size"] // p[1]) * (v["size"] // p[2]) >= 2048
    x = torch.randn(1, 1, v["num_frames"], v["size"], v["size"])
    out = m(x, torch.tensor([500.0]), mdw.condition(torch.tensor([3])), return_dict=False)[0]
    assert out.shape == x.shape


def test_condition_is_one_hot_with_a_null_class():
    c = mdw.condition(torch.tensor([0, mdw.NULL_CLASS]))
    assert c.shape == (2, 1, 16) and c[0, 0, 0] == 1 and c[1, 0, mdw.NULL_CLASS] == 1


def test_crop_digits_recovers_the_pasted_digit():
    d = make_moving_digits(3, video_config("test"), seed=0)
    frames = d.videos[:, 0]
    crops = mdw.crop_digits(frames)
    for i in range(3):
        y, x = d.trajectories[i, 0, 0].tolist()
        pasted = frames[i, :, y : y + 16, x : x + 16]
        # the digit may have blank margins: the crop holds all of its ink, maybe shifted
        assert abs(float((crops[i] + 1).sum() - (pasted + 1).sum())) < 1e-4


def test_sample_shape_and_range_with_a_random_model():
    m = mdw.build({**mdw.DEFAULT_CONFIG, "num_layers": 1}).eval()
    v = mdw.sample(m, torch.tensor([1]), steps=1, generator=torch.Generator().manual_seed(0))
    assert v.shape == (1, 8, 1, 32, 32) and v.abs().max() <= 1
