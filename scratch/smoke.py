import logging, sys, torch
logging.basicConfig(level=logging.INFO)
torch.set_num_threads(1)
from diffkit.zoo import moving_digits_wan as z
m = z.train("/tmp/mdw_smoke", settings=dict(train_images=64, image_steps=3, image_batch=8, train_videos=16, video_steps=2, video_batch=2, eval_per_class=1, eval_steps=2, warmup_steps=1))
print({k: v for k, v in m.items() if k not in ("machine", "settings")})
