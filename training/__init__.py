"""The training loop shared by every model: datasets and loaders of a run,
optimiser and schedule, EMA, exact resume, run logging (metrics.jsonl and
W&B). Imports ``core``, ``datasets``, ``models`` and ``inference`` (the
validation metric and overlays)."""
