"""The four Severstal defect classes: ids as the csv files write them, and names for pictures."""

NUM_CLASSES = 4
CLASS_IDS = (1, 2, 3, 4)
CLASS_NAMES = ("1 pits", "2 cross scratch", "3 long scratch", "4 patch")
