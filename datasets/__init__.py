"""Everything between files on disk and tensors: RLE codec, csv readers,
datasets, augmentation, folds, synthetic data and COCO conversion."""
