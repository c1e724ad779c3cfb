"""Median step time of orthoptim's muon, normuon and adamw on the `lm` race task's model (many
small parameters, where per-parameter Python overhead shows), for the orthoptim on PYTHONPATH.

Usage: PYTHONPATH=<src> python step_time.py  -> one JSON line {name: median ms}
"""

import json
import statistics
import time

import torch

import orthoptim
import orthoptim.bench.arena.tasks as tasks

torch.set_num_threads(2)
model = tasks.make("lm").model(0)
out = {}
for name in ("muon", "normuon", "adamw"):
    opt = orthoptim.build(name, model)
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in model.parameters()]
    times = []
    for _ in range(60):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    out[name] = round(statistics.median(times[10:]) * 1e3, 3)
print(json.dumps(out))
