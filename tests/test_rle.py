"""RLE codec: round trips, pycocotools as an independent oracle, hand-checked
examples and one test per kind of malformed input."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from datasets.rle import STRIP_SHAPE, RLEError, parse_runs, rle_area, rle_decode, rle_encode
from datasets.severstal import read_mask_table

SHAPES = [STRIP_SHAPE, (64, 64), (1, 1), (7, 3), (3, 7)]


def random_mask(shape, rng, p=0.3) -> np.ndarray:
    return (rng.random(shape) < p).astype(np.uint8)


def coco_counts(rle: str, shape) -> list[int]:
    """Our runs as pycocotools' uncompressed counts: alternating zeros and ones
    from pixel 0, column-major, no trailing empty run."""
    starts, lengths = parse_runs(rle, shape)
    bounds = np.concatenate(([0], np.stack([starts, starts + lengths], 1).ravel(), [shape[0] * shape[1]]))
    counts = np.diff(bounds).tolist()
    return counts[:-1] if counts[-1] == 0 and len(counts) > 1 else counts


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 1.0])
def test_round_trip(shape, p):
    mask = random_mask(shape, np.random.default_rng(0), p)
    rle = rle_encode(mask)
    decoded = rle_decode(rle, shape)
    assert decoded.dtype == np.uint8 and decoded.shape == shape and decoded.flags.f_contiguous
    np.testing.assert_array_equal(decoded, mask)
    assert rle_area(rle, shape) == int(mask.sum()) == int(decoded.sum())


def test_empty_and_full_masks():
    assert rle_encode(np.zeros((5, 4), np.uint8)) == ""
    assert rle_encode(np.ones((5, 4), np.uint8)) == "1 20"
    for empty in ("", "   ", None, float("nan")):
        np.testing.assert_array_equal(rle_decode(empty, (5, 4)), np.zeros((5, 4), np.uint8))
        assert rle_area(empty, (5, 4)) == 0


def test_encode_accepts_any_dtype_nonzero_is_foreground():
    mask = random_mask((9, 13), np.random.default_rng(1))
    expected = rle_encode(mask)
    assert rle_encode(mask.astype(bool)) == expected
    assert rle_encode(mask.astype(np.float32) * 0.5) == expected
    assert rle_encode(mask.astype(np.int64) * -7) == expected
    assert rle_encode(np.asfortranarray(mask)) == expected
    assert rle_encode(mask[:, ::-1][:, ::-1]) == expected


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("shape", [STRIP_SHAPE, (64, 64), (7, 3)])
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pycocotools(shape, seed):
    mask = random_mask(shape, np.random.default_rng(seed), p=[0.02, 0.5, 0.97][seed])
    theirs = coco_mask.encode(np.asfortranarray(mask))
    ours = rle_encode(mask)
    ours_as_coco = coco_mask.frPyObjects({"size": list(shape), "counts": coco_counts(ours, shape)}, *shape)
    assert ours_as_coco["counts"] == theirs["counts"]
    np.testing.assert_array_equal(rle_decode(ours, shape), coco_mask.decode(theirs))
    assert rle_area(ours, shape) == int(coco_mask.area(theirs))


def test_hand_checked_4x3():
    # Column-major numbering, from 1: column 0 is pixels 1..4, column 1 is 5..8.
    mask = np.array([[1, 0, 0],
                     [1, 1, 0],
                     [0, 1, 0],
                     [0, 0, 1]], np.uint8)
    assert rle_encode(mask) == "1 2 6 2 12 1"
    np.testing.assert_array_equal(rle_decode("1 2 6 2 12 1", (4, 3)), mask)
    # A run crosses from the bottom of one column to the top of the next.
    np.testing.assert_array_equal(rle_decode("4 2", (4, 3)), [[0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])


@pytest.mark.parametrize("pixel, row_col", [(1, (0, 0)), (2, (1, 0)), (256, (255, 0)), (257, (0, 1)),
                                            (256 * 1600, (255, 1599))])
def test_severstal_pixel_numbering(pixel, row_col):
    mask = rle_decode(f"{pixel} 1", STRIP_SHAPE)
    assert mask.sum() == 1 and mask[row_col] == 1
    assert rle_encode(mask) == f"{pixel} 1"


def test_not_transposed():
    """A horizontal band of row 0 is one run per column (column-major), not one long run."""
    mask = np.zeros((4, 3), np.uint8)
    mask[0] = 1
    assert rle_encode(mask) == "1 1 5 1 9 1"


def test_parse_runs_returns_zero_indexed_starts():
    starts, lengths = parse_runs("3 2 10 4", (4, 4))
    assert starts.dtype == lengths.dtype == np.int64
    assert starts.tolist() == [2, 9] and lengths.tolist() == [2, 4]


def test_adjacent_runs_are_valid():
    np.testing.assert_array_equal(rle_decode("1 2 3 2", (4, 1)), rle_decode("1 4", (4, 1)))


MALFORMED = [
    ("1 2 3", r"odd number of tokens \(3\)"),
    ("1 2 x 4", r"non-integer token 'x'"),
    ("1 2 3 4.5", r"non-integer token '4.5'"),
    ("+-5 2", r"non-integer token '\+-5'"),
    ("0 3", r"start 0 < 1 in pair 0"),
    ("1 2 -4 2", r"start -4 < 1 in pair 1"),
    ("1 0", r"length 0 < 1 in pair 0"),
    ("5 2 9 -1", r"length -1 < 1 in pair 1"),
    ("10 4", r"run 10\+4 ends at pixel 13, past the end of a 4x3 image \(12 pixels\)"),
    ("1 2 13 1", r"run 13\+1 ends at pixel 13, past the end of a 4x3 image \(12 pixels\)"),
    ("1 99999999999999999999", r"past the end|out of range"),
    ("1 3 3 2", r"overlapping runs: pair 1 starts at 3, pair 0 covers 1..3"),
    ("6 2 1 2", r"unsorted runs: pair 1 starts at 1, pair 0 covers 6..7"),
]


@pytest.mark.parametrize("rle, message", MALFORMED)
def test_malformed_rle_names_the_problem(rle, message):
    for fn in (rle_decode, parse_runs, rle_area):
        with pytest.raises(RLEError, match=message + r".*\(train\.csv row 7\)$"):
            fn(rle, (4, 3), where="train.csv row 7")


def test_non_string_rle_is_rejected():
    with pytest.raises(RLEError, match="must be a string, got int"):
        rle_decode(5, (4, 3))


def test_whitespace_variants_parse_like_spaces():
    expected = rle_decode("1 2 5 1", (4, 3))
    for rle in (" 1 2 5 1 ", "1  2 5 1", "1\t2\n5 1"):
        np.testing.assert_array_equal(rle_decode(rle, (4, 3)), expected)


@pytest.mark.parametrize("rle, message", MALFORMED)
def test_malformed_rle_in_csv_names_file_and_row(tmp_path, rle, message):
    path = tmp_path / "train.csv"
    path.write_text(f"ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\nb.jpg,3,{rle}\n")
    with pytest.raises(RLEError, match=message + rf".*\({path} row 2, b\.jpg\)$"):
        read_mask_table(path, shape=(4, 3))


def reference_decode(rle: str, shape) -> np.ndarray | None:
    """Plain-Python oracle: the mask of a well-formed RLE string, None for a
    malformed one (the rules of the module docstring, written out run by run)."""
    tokens = rle.split()
    if len(tokens) % 2 or not all(t.isdigit() for t in tokens):
        return None
    values = [int(t) for t in tokens]
    flat, painted = np.zeros(shape[0] * shape[1], np.uint8), 0
    for start, length in zip(values[0::2], values[1::2]):
        if start < 1 or length < 1 or start - 1 < painted or start - 1 + length > flat.size:
            return None
        flat[start - 1:start - 1 + length] = 1
        painted = start - 1 + length
    return flat.reshape(shape, order="F")


def test_compiled_decoder_agrees_with_a_plain_python_oracle_on_fuzzed_strings():
    """Random strings of digits, separators and stray characters: the compiled
    fast path and the numpy reference behind it accept exactly the strings the
    oracle accepts, with the same mask, and raise RLEError on the rest."""
    rng = np.random.default_rng(0)
    alphabet = list("0123456789") * 4 + [" "] * 12 + ["\t", "-", "+", "x", "."]
    n_valid = 0
    for _ in range(3000):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        if rng.random() < 0.5:  # near-valid: a canonical string with one token nudged
            rle = rle_encode(random_mask(shape, rng)).split()
            if rle:
                i = rng.integers(len(rle))
                rle[i] = str(int(rle[i]) + int(rng.integers(-2, 3)))
            rle = " ".join(rle)
        else:
            rle = "".join(rng.choice(alphabet, int(rng.integers(0, 12))))
        expected = reference_decode(rle, shape)
        if expected is None and any(t.lstrip("+").isdigit() and t[0] == "+" for t in rle.split()):
            continue  # '+5' is an integer to int() and the numpy path; the oracle keeps to plain digits
        if expected is None:
            with pytest.raises(RLEError):
                rle_decode(rle, shape)
        else:
            np.testing.assert_array_equal(rle_decode(rle, shape), expected, err_msg=repr(rle))
            n_valid += 1
    assert n_valid > 1000  # both branches are exercised
