"""``orthoptim race``, the arena: tasks, racers and peers, the protocol and the sweep, runs,
records, the report and plots. ``orthoptim.bench.race`` (``arena.api.race``) races a user's own
model and data; the room is named ``arena`` so that the function keeps that name."""
