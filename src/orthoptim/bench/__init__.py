"""Layer 4: models, tasks and the arena (imports the library, never the reverse).

``race`` runs the arena's protocol on a model and data you supply (``orthoptim.bench.race.api``).
"""

from orthoptim.bench.race.api import race

__all__ = ["race"]
