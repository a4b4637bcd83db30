"""Tour section: the bundled data and the evaluation network (accuracy, FID floor)."""

from __future__ import annotations

import torch

TITLE = "Data and the evaluation network"
ORDER = 0


def build(section, ctx) -> None:
    from diffkit import models
    from diffkit.core.metrics import bootstrap_std, frechet_distance, kernel_inception_distance
    from diffkit.data import MovingDigitsConfig, load_digits, make_moving_digits
    from diffkit.report import make_grid, video_strip

    train, test = load_digits("train"), load_digits("test")
    section.text(
        f"scikit-learn's bundled digits, resized to 16x16 and scaled to [-1, 1]: {len(train)} train and "
        f"{len(test)} held-out test images (fixed stratified split). No download is used anywhere."
    )
    order = torch.cat([torch.nonzero(train.labels == c).flatten()[:10] for c in range(10)])
    section.image(
        make_grid(train.images[order], nrow=10, scale=3), "ten training digits of each class"
    )

    ctx.status("moving digits")
    mcfg = MovingDigitsConfig()
    vids = make_moving_digits(4, mcfg, seed=ctx.seed)
    section.image(
        video_strip(vids.videos, scale=2),
        f"moving digits: 4 videos of {mcfg.num_frames} frames, {mcfg.size}x{mcfg.size}",
    )

    ctx.status("evaluation network")
    net = models.load("digit-classifier")
    f_tr, p_tr = net.embed(train.images)
    f_te, p_te = net.embed(test.images)
    acc_te = float((p_te == test.labels).float().mean())
    fid_floor = frechet_distance(f_tr, f_te)
    kid, kid_std = kernel_inception_distance(f_tr, f_te, num_subsets=20, subset_size=300)
    fid_std = bootstrap_std(frechet_distance, f_tr, f_te, n=5 if ctx.fast else 10)
    rows = [
        {"metric": "test accuracy (held-out split)", "value": acc_te},
        {"metric": "train accuracy", "value": float((p_tr == train.labels).float().mean())},
        {"metric": "FID floor, train vs test features", "value": fid_floor},
        {"metric": "FID bootstrap std", "value": fid_std},
        {"metric": "KID floor, train vs test (raw MMD², no ×10³)", "value": kid},
        {"metric": "KID std over subsets (raw)", "value": kid_std},
    ]
    section.table(rows, "digit-classifier: the evaluation network (128-d penultimate features)")
    section.text(
        "The FID floor is the distance between two sets of *real* digits: a generator cannot be "
        "expected to score below it, and differences smaller than its bootstrap std are noise. "
        "The evaluation network is never used as a training signal."
    )
    ctx.shared["fid_floor"] = fid_floor
