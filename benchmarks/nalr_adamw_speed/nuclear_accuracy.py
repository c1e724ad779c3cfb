import statistics
import time

import torch

torch.set_num_threads(2)


def gram(x):
    return x.mT @ x if x.shape[0] >= x.shape[1] else x @ x.mT


def exact(x):
    m = x.double()
    return torch.linalg.eigvalsh(gram(m)).clamp_min(0).sqrt().sum()


def g32(x):
    return torch.linalg.eigvalsh(gram(x)).clamp_min(0).sqrt().sum()


def vec(x):
    _, v = torch.linalg.eigh(gram(x))
    y = x @ v if x.shape[0] >= x.shape[1] else v.mT @ x
    return torch.linalg.vector_norm(y, dim=0 if x.shape[0] >= x.shape[1] else 1).sum()


def svd32(x):
    return torch.linalg.svdvals(x).sum()


M = dict(exact=exact, g32=g32, vec=vec, svd32=svd32)
gen = torch.Generator().manual_seed(0)


def lowrank(m, n, r):
    a = torch.randn(m, r, generator=gen) * torch.logspace(0, -2, r)
    b = torch.randn(r, n, generator=gen)
    return a @ b / (m * n) ** 0.5


for m, n in [(2048, 512), (512, 2048), (512, 512)]:
    xs = {"gauss": torch.randn(m, n, generator=gen)}
    for r in [1, 4, 32, 256]:
        xs[f"rank{r}"] = lowrank(m, n, r)
    for lvl in [1e-1, 1e-2, 1e-3]:
        lr = lowrank(m, n, 4)
        xs[f"r4+{lvl}"] = lr + lvl * lr.norm() * torch.randn(m, n, generator=gen) / (m * n) ** 0.5
    for k, x in xs.items():
        ref = exact(x).item()
        print(
            f"{m}x{n} {k:10s}",
            " ".join(
                f"{nm}={(f(x).item() - ref) / ref:9.2e}" for nm, f in M.items() if nm != "exact"
            ),
        )
for shape in [(2048, 512), (512, 512)]:
    x = torch.randn(shape)
    ts = {k: [] for k in M}
    for _ in range(7):
        for k, f in M.items():
            t = time.perf_counter()
            f(x)
            ts[k].append(time.perf_counter() - t)
    print(
        shape, " ".join(f"{k}={statistics.median(v) * 1e3:.1f}" for k, v in ts.items()), flush=True
    )
