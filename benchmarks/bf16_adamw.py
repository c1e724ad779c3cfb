"""bf16 AdamW step: the eager chain (fast_paths=False) against the fused kernel on float32 copies,
interleaved, 2 threads, on orthoptim speed's default 23.1M-parameter set in bfloat16."""
import statistics, time, json, sys
import torch
from orthoptim import ChainOptimizer
from orthoptim.recipes import adamw
from orthoptim.bench.speed.benchmark import LAYER_SHAPES, ADAMW_EXTRA
from orthoptim.bench.speed.measure import transient_peak
torch.set_num_threads(2)
shapes = list(LAYER_SHAPES) * 6 + list(ADAMW_EXTRA)
def make(fast):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g).bfloat16().requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).bfloat16()
    return ps, ChainOptimizer(ps, adamw(), lr=1e-3, weight_decay=0.01, fast_paths=fast)
entrants = {"eager chain": make(False), "fused on float32 copies": make(True)}
times = {k: [] for k in entrants}
for r in range(13):
    for k, (ps, opt) in entrants.items():
        t = time.perf_counter(); opt.step(); dt = time.perf_counter() - t
        if r >= 3: times[k].append(dt)
out = {k: statistics.median(v) * 1e3 for k, v in times.items()}
peaks = {k: transient_peak(opt.step) for k, (ps, opt) in entrants.items()}
rows = {"command": "python " + " ".join(sys.argv), "median_ms": out, "transient_peak_bytes": peaks,
        "ratio_fused_over_eager": out["fused on float32 copies"] / out["eager chain"], "torch": torch.__version__}
print(json.dumps(rows, indent=1))
