"""``orthoptim speed``: the optimizer step alone, timed against the peers (``benchmark``), its
records and table (``result``, ``report``), the peers (``peers``), what it measures besides time
(``measure``) and the per-rank distributed step (``dist``)."""
