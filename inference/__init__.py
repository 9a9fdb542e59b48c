"""From a trained model to masks and scores: tiled inference with TTA and
model averaging, post-processing and its tuner, the Kaggle metric and csv
scoring, COCO mAP, and pictures (overlays, Grad-CAM). Imports ``core``,
``datasets`` and ``models``; never the training loop."""
