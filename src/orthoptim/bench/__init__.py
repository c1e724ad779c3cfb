"""Layer 5: the benchmarks (import the library, never the reverse), in two rooms:
``arena`` (``orthoptim race``: tasks, racers, protocol, records, report, plots) and ``speed``
(``orthoptim speed``: the optimizer step alone), with what both use in ``shared`` and the models
in ``models`` (also the CLI's ``route``).

``race`` runs the arena's protocol on a model and data you supply (``orthoptim.bench.arena.api``).
"""

from orthoptim.bench.arena.api import race

__all__ = ["race"]
