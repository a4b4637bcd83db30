import logging, sys, json, torch
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
from diffkit.zoo import moving_digits_wan as z
m = z.train(sys.argv[1], work_dir="/tmp/mdw_full_work")
print(json.dumps({k: v for k, v in m.items() if k not in ("machine",)}, indent=1))
