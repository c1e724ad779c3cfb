import statistics
import time

import torch

torch.set_num_threads(2)
shapes = [(1536, 512), (512, 512), (2048, 512), (512, 2048)] * 6 + [(8192, 512)]
gs = [torch.randn(s) * 1e-3 for s in shapes]
ps = [torch.randn(s) * 1e-3 for s in shapes]
ms = [torch.zeros(s) for s in shapes]
vs = [torch.zeros(s) for s in shapes]
st = [torch.tensor(1.0) for s in shapes]


def dot():
    return torch.stack([torch.dot(g.view(-1), g.view(-1)) for g in gs]).isfinite().all()


def fnorm():
    return torch.stack(torch._foreach_norm(gs)).le(1e19).all()


def vnorm():
    return torch.stack([torch.linalg.vector_norm(g) for g in gs]).le(1e19).all()


def amax():
    return torch.stack([torch.aminmax(g)[1] for g in gs]).le(1e19).all()


def absmax():
    return torch.stack(torch._foreach_norm(gs, float("inf"))).le(1e19).all()


def fmax():
    return torch.stack(torch._foreach_max(gs)).le(1e19).all()


def sumsq():
    return torch.stack([g.view(-1).square().sum() for g in gs]).isfinite().all()


def fused():
    torch._fused_adamw_(
        ps,
        gs,
        ms,
        vs,
        [],
        st,
        lr=1e-3,
        beta1=0.9,
        beta2=0.999,
        weight_decay=0.01,
        eps=1e-8,
        amsgrad=False,
        maximize=False,
    )


fs = dict(fused=fused, dot=dot, fnorm=fnorm, vnorm=vnorm)
for f in fs.values():
    f()
ts = {k: [] for k in fs}
for _ in range(30):
    for k, f in fs.items():
        t = time.perf_counter()
        f()
        ts[k].append(time.perf_counter() - t)
m = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
for k in m:
    print(f"{k:8s} {m[k]:7.2f} ms x fused {m[k] / m['fused']:.3f}")
