import statistics
import sys
import time

import torch

from orthoptim import registry

torch.set_num_threads(2)
shapes = [(1536, 512), (512, 512), (2048, 512), (512, 2048)] * int(
    __import__("os").environ.get("LAYERS", "6")
)
g = torch.Generator().manual_seed(0)
names = sys.argv[2:] or ["muon", "muon_nalr"]
entr = {}
for spec in names:
    name, _, opt = spec.partition(":")
    kw = dict(x.split("=") for x in opt.split(",")) if opt else {}
    ps = [(torch.randn(s, generator=g) * 0.02).requires_grad_() for s in shapes]
    o = registry.build(name, ps, **kw)
    entr[spec] = (ps, o)


def step(ps, o):
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 0.01
    t = time.perf_counter()
    o.step()
    return time.perf_counter() - t


for _ in range(2):
    for ps, o in entr.values():
        step(ps, o)
R = int(sys.argv[1])
ts = {k: [] for k in entr}
for r in range(R):
    for k, (ps, o) in entr.items():
        ts[k].append(step(ps, o))
    print(r, {k: round(v[-1] * 1e3) for k, v in ts.items()}, flush=True)
m = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
for k in m:
    print(f"{k:40s} {m[k]:8.1f} ms  x muon {m[k] / m[names[0]]:.3f}")
