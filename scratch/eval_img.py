import sys, torch
torch.set_num_threads(1)
from PIL import Image
from diffkit.models import moving_digits_wan as mdw
from diffkit import models
st = torch.load(sys.argv[1], weights_only=True)
m = mdw.build(mdw.DEFAULT_CONFIG); m.load_state_dict(st["ema"]); m.eval()
clf = models.load("digit-classifier")
labels = torch.arange(100) % 10
for cfg in (1.0, 3.0):
    v = mdw.sample(m, labels, steps=20, cfg_scale=cfg, num_frames=1, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    _, pred = clf.embed(mdw.classifier_crops(v[:, 0]))
    print("cfg", cfg, "acc", float((pred == labels).float().mean()), flush=True)
x = ((v[:40, 0, 0] + 1) / 2 * 255).clamp(0, 255).byte()
Image.fromarray(x.view(4, 10, 32, 32).permute(0, 2, 1, 3).reshape(128, 320).numpy()).resize((640, 256), Image.NEAREST).save("/tmp/stage1.png")
