"""What both rooms of the bench use: optional dependencies (``optional``), the environment
fingerprint and strict-JSON records (``environment``), resident-set and state-tensor helpers
(``memory``) and the peers' shared pieces (``peers``: the registry's Muon defaults, heavyball run
eagerly). The race lives in ``orthoptim.bench.arena``, the step-speed benchmark in
``orthoptim.bench.speed``."""
