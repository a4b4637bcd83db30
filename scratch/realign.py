import logging, json, torch
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
from diffkit.zoo import moving_digits_wan_ropeslr as z
m = z.train("/tmp/mdw_rs")
print(json.dumps({k: v for k, v in m.items()}, indent=1, default=str))
