"""Type aliases shared by every layer."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, get_args

from torch import Tensor, nn

State = MutableMapping[str, Tensor]
"""A transform's view of one parameter's state: buffer name -> tensor."""

Role = Literal["hidden", "embedding", "head", "vector"]
ROLES: tuple[str, ...] = get_args(Role)

ParamsLike = nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]]
"""What ``ChainOptimizer`` and ``orthoptim.build`` accept: a model, tensors or param groups."""
