"""Everything between files on disk and tensors: RLE codec, csv readers,
datasets, augmentation, folds, synthetic data and COCO conversion."""

import os

# Albumentations asks PyPI for a newer version at import (a 2 s timeout offline);
# this package is imported before it everywhere.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
