import statistics
import sys
import time

import torch

from orthoptim import registry
from orthoptim.nonfinite import all_finite

torch.set_num_threads(2)
shapes = [(1536, 512), (512, 512), (2048, 512), (512, 2048)] * 6 + [(8192, 512)]
g = torch.Generator().manual_seed(0)


def mk():
    ps = [(torch.randn(s, generator=g) * 0.02).requires_grad_() for s in shapes]
    return ps


grads = [torch.randn(s, generator=g) * 1e-3 for s in shapes]
entr = {}
ps = mk()
tf = torch.optim.AdamW(ps, fused=True)
entr["torch_fused"] = (ps, tf.step)
ps = mk()
o = registry.build("adamw", ps)
entr["adamw"] = (ps, o.step)
ps = mk()
o2 = registry.build("adamw", ps, nonfinite="off")
entr["adamw_off"] = (ps, o2.step)
ps = mk()
entr["check"] = (ps, lambda ps=ps: all_finite([p.grad for p in ps]))
for ps, _ in entr.values():
    for p, gg in zip(ps, grads, strict=True):
        p.grad = gg.clone()
for _ in range(2):
    for _ps, f in entr.values():
        f()
R = int(sys.argv[1]) if len(sys.argv) > 1 else 15
ts = {k: [] for k in entr}
for _ in range(R):
    for k, (_ps, f) in entr.items():
        t = time.perf_counter()
        f()
        ts[k].append(time.perf_counter() - t)
m = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
for k in m:
    print(f"{k:12s} {m[k]:7.2f} ms  x fused {m[k] / m['torch_fused']:.3f}")
