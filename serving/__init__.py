"""The inspection service behind serve.py: micro-batching, the inspector
(predict.py's models, tiler and post-processing) and the HTTP layer.
Imports ``core``, ``datasets``, ``models`` and ``inference``; never training."""
