import sys, torch
torch.set_num_threads(1)
from PIL import Image
from diffkit.models import moving_digits_wan as mdw
st = torch.load(sys.argv[1], weights_only=True)
m = mdw.build(mdw.DEFAULT_CONFIG); m.load_state_dict(st["ema"]); m.eval()
labels = torch.arange(10)
v = mdw.sample(m, labels, steps=20, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
F_ = v.shape[1]; S = v.shape[-1]
x = ((v[:, :, 0] + 1) / 2 * 255).clamp(0, 255).byte()
grid = x.permute(0, 2, 1, 3).reshape(10 * S, F_ * S)
Image.fromarray(grid.numpy()).resize((F_ * S * 2, 10 * S * 2), Image.NEAREST).save(sys.argv[2])
