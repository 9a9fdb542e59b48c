"""The loop and everything around it: config, training, evaluation, metrics,
checkpoints, distributed helpers, tiled inference and post-processing."""
