"""``orthoptim race``: tasks, racers and peers, the sweep protocol, runs, records, the report
and plots (``orthoptim.bench.race.api.race`` for a user's own model and data)."""
