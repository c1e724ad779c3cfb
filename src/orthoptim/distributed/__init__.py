"""Distributed optimizer steps on ``torch.distributed``: DDP (replicated) and FSDP2 (``Shard(0)``).

Each matrix parameter's step runs on one owner rank, chosen by longest-processing-time bin
packing over the chain's cost estimate (``owners``); ``engine`` runs the step: replicated
parameters exchange the owners' new values with one all-gather per dtype, FSDP2 shards run the
chain's element-wise prefix and tail locally and send the matrix core to its owner and back with
one all-to-all per dtype and direction. See docs/distributed.md.
"""

from __future__ import annotations

from orthoptim.distributed.engine import (
    DistributedStep,
    UnsupportedLayoutError,
    detect,
    is_distributed,
    local_tensor,
)
from orthoptim.distributed.owners import assign_owners

__all__ = [
    "DistributedStep",
    "UnsupportedLayoutError",
    "assign_owners",
    "detect",
    "is_distributed",
    "local_tensor",
]
