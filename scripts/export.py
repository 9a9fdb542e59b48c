"""Export checkpoints to one self-contained ONNX file for offline and edge use.

    python scripts/export.py --checkpoint RUN/best.pt [MORE.pt ...] --out model.onnx [--opset 18] \\
        [--sample STRIP.jpg] [--postprocess.file=tuned.json] [--predict.key=value ...]

Several checkpoints (cross-validation folds) become one graph that averages
them. The file carries its weights and, as metadata, the class ids, the
input normalisation, the tile, stride and blend, the post-processing
predict.py would apply (tuned; for the folds of one cross-validation, its
out-of-fold file), the config and each source checkpoint's sha256
(inference/onnx_export.py). Parity with eager PyTorch is always checked on a
real tile and a whole strip (``--sample``, default the first training image
of the checkpoint's data.root); beyond 1e-3 nothing is written and the
script exits non-zero.

    python predict.py --checkpoint model.onnx --images DIR --out OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from core.cli import parse_with_overrides
from core.config import ConfigError
from inference.onnx_export import DEFAULT_OPSET, ExportRefused, export_checkpoints, format_parity
from workflows.cross_validation import cv_postprocess_for


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, nargs="+", type=Path, help="one or more checkpoints, averaged")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--sample", type=Path, help="a real strip for the parity check")
    return parse_with_overrides(parser, argv, sections=("predict", "postprocess"))


def main(argv=None):
    args, overrides = parse_args(argv)
    torch.manual_seed(0)
    try:
        result = export_checkpoints(args.checkpoint, args.out, overrides, args.sample,
                                    cv_postprocess_for(args.checkpoint), args.opset)
    except (ConfigError, FileNotFoundError) as err:
        raise SystemExit(f"export.py: {err}") from None
    except ExportRefused as err:
        raise SystemExit(f"export.py: refused, nothing written: {err}") from None
    print(f"parity (ONNX Runtime CPU against eager PyTorch):\n{format_parity(result.parity)}")
    print(f"wrote {result.path} ({result.n_bytes / 2**20:.1f} MiB, {result.exporter} exporter, opset {args.opset})")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
