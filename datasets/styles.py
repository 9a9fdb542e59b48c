"""Looks of the synthetic steel: one ``Style`` per family of strips.

A style fixes the ranges from which every image of a synthetic dataset draws
its steel texture (brightness, lighting, grain direction and scale, rolling
marks, JPEG quality) and its defects' appearance (contrast, polarity, edge
softness, real mask shapes). Class frequencies are not a style's: every style
keeps the Kaggle ones (``datasets.synthetic.LABEL_SETS``), so scores on
different styles measure the look alone.

``classic`` is the look the generator had before styles existed: its values
are the constants that generator used, so a classic dataset is byte-identical
to one made then (tests/test_styles.py pins it). ``random`` is not a fixed
style: ``random_style`` draws one from a seed.

Ranges are (low, high) pairs drawn per image with ``rng.uniform`` (for
integers, ``rng.integers``: high excluded); grey levels are on the 0..255
scale of the stored JPEGs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

DEFAULT_STYLE = "classic"
RANDOM_STYLE = "random"


@dataclass(frozen=True)
class Style:
    """The ranges one synthetic dataset draws its images from (defaults: classic)."""

    # ---- steel texture
    level: tuple[float, float] = (85.0, 135.0)  # a strip's mean grey: brightness from strip to strip
    light_along: tuple[float, float] = (4.0, 14.0)  # amplitude of the smooth lighting drift along the strip
    light_knots: tuple[int, int] = (3, 10)  # knots of that drift over the strip: fewer, broader
    light_across: tuple[float, float] = (2.0, 7.0)  # amplitude of the lighting drift across the strip
    ramp: tuple[float, float] = (0.0, 0.0)  # end-to-end grey change of a linear gradient, random direction
    grain_axis: Literal["x", "y"] = "x"  # marks and streaks run along the strip (x) or across it (y)
    roll_marks: tuple[float, float] = (2.0, 6.0)  # amplitude of the long marks (80 px cells along the grain)
    streaks: tuple[float, float] = (1.5, 4.0)  # amplitude of the short streaks (10 px cells along the grain)
    grain: tuple[float, float] = (8.0, 20.0)  # peak to peak of the grain
    grain_size: int = 1  # px per independent grain value: 1 fine and matte, 3 coarse
    roll_imprints: tuple[float, float] = (0.0, 0.0)  # amplitude of marks a roll prints once per turn, across
    jpeg_quality: tuple[int, int] = (85, 96)  # drawn per image, high excluded
    # ---- defect appearance
    contrast: float = 1.0  # scales every defect's nominal contrast
    faint_fraction: float = 0.2  # defects drawn at about half their contrast
    dark_share: float | None = None  # chance a defect is darker than the steel; None: each class's own
    edge_softness: float = 1.0  # scales the blur of defect edges
    real_shapes: float = 0.0  # share of defects drawn inside real Kaggle mask shapes (datasets/real_shapes.py)

    def to_dict(self) -> dict:
        """Plain JSON data (tuples as lists), as the dataset marker stores it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


STYLES = {
    DEFAULT_STYLE: Style(),
    "bright_matte": Style(
        level=(160.0, 195.0), light_along=(2.0, 6.0), light_across=(1.0, 3.0), roll_marks=(0.5, 1.5),
        streaks=(0.5, 1.5), grain=(16.0, 28.0), jpeg_quality=(90, 98), contrast=1.1,
    ),
    "dark_rolled": Style(
        level=(45.0, 75.0), light_along=(3.0, 8.0), roll_marks=(7.0, 13.0), streaks=(3.0, 6.0), grain=(6.0, 12.0),
        grain_size=2, roll_imprints=(6.0, 12.0), jpeg_quality=(35, 60), real_shapes=0.5,
    ),
    "cross_grain": Style(
        level=(95.0, 150.0), light_along=(15.0, 35.0), light_knots=(2, 5), light_across=(8.0, 18.0),
        ramp=(25.0, 50.0), grain_axis="y", roll_marks=(3.0, 7.0), streaks=(2.0, 5.0), grain=(8.0, 16.0),
        jpeg_quality=(75, 90), real_shapes=1.0,
    ),
    "faint_soft": Style(
        level=(90.0, 140.0), grain=(10.0, 22.0), grain_size=3, contrast=0.6, faint_fraction=0.35, dark_share=0.5,
        edge_softness=2.5, real_shapes=0.5,
    ),
}
DESCRIPTIONS = {
    DEFAULT_STYLE: "the generator's original look (the default; make demo's data)",
    "bright_matte": "bright strips, fine matte grain, hardly any rolling marks, light JPEG",
    "dark_rolled": "dark strips, strong rolling marks and roll imprints, coarse grain, heavy JPEG, "
                   "half the defects in real mask shapes",
    "cross_grain": "marks and streaks across the strip, strong lighting gradients, every defect in a real mask shape",
    "faint_soft": "low-contrast, soft-edged defects of either polarity on coarse grain, "
                  "half of them in real mask shapes",
}
STYLE_CHOICES = (*STYLES, RANDOM_STYLE)


def random_style(rng: np.random.Generator) -> Style:
    """A style drawn from ``rng``, its ranges spanning those of the named styles."""
    level = round(rng.uniform(55, 180), 1)
    quality = int(rng.integers(35, 91))
    imprints = rng.uniform(4, 12) if rng.random() < 0.4 else 0.0
    return Style(
        level=(level - 18, level + 18),
        light_along=_range(rng, 3, 30),
        light_knots=(2, int(rng.integers(4, 11))),
        light_across=_range(rng, 1, 16),
        ramp=_range(rng, 0, 45),
        grain_axis="y" if rng.random() < 0.3 else "x",
        roll_marks=_range(rng, 0.5, 13),
        streaks=_range(rng, 0.5, 6),
        grain=_range(rng, 6, 28),
        grain_size=int(rng.integers(1, 4)),
        roll_imprints=(imprints / 2, imprints),
        jpeg_quality=(quality, quality + 8),
        contrast=round(rng.uniform(0.55, 1.25), 3),
        faint_fraction=round(rng.uniform(0.1, 0.4), 3),
        dark_share=None if rng.random() < 0.5 else round(rng.uniform(0.3, 0.9), 3),
        edge_softness=round(rng.uniform(0.7, 2.5), 3),
        real_shapes=float(rng.choice((0.0, 0.5, 1.0))),
    )


def _range(rng, low: float, high: float) -> tuple[float, float]:
    """(top / 2, top), top drawn in [low, high), rounded to 0.1 grey level."""
    top = round(rng.uniform(low, high), 1)
    return top / 2, top


def resolve_style(name: str, rng: np.random.Generator) -> Style:
    """The style ``name`` (one of STYLE_CHOICES); ``rng`` draws it when ``name`` is ``random``."""
    if name == RANDOM_STYLE:
        return random_style(rng)
    if name not in STYLES:
        raise ValueError(f"unknown style {name!r}; choose one of {', '.join(STYLE_CHOICES)}")
    return STYLES[name]
