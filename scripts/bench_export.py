"""Full strips per second: eager PyTorch against ONNX Runtime, float32 and int8, in one run.

    python scripts/bench_export.py --images data/synthetic/test_images --strips 16 \\
        --model demo:runs/demo/fold0/best.pt:demo.onnx:demo.int8.onnx \\
        --model student:runs/edge_student/best.pt:student.onnx:student.int8.onnx

Each ``--model NAME:CHECKPOINT:ONNX[:INT8]`` runs, on the same decoded
strips and the same threads, through: eager float32, eager bf16 autocast
(only where ``core.precision.resolve_amp`` finds bf16 native; otherwise it
says it is skipped, as emulated bf16 is far slower), ONNX Runtime float32
and ONNX Runtime int8 (scripts/quantize.py). A strip is timed from its
decoded pixels to its post-processed masks: predict.py's tiling and batching
(``images_per_call``), the checkpoint's predict settings, then
post-processing; JPEG decoding is left out (the same for every runtime).
Each runtime is warmed up on one strip, then timed ``--repeats`` times over
``--strips`` strips; the best repeat counts (the least disturbed by other
work on the machine). Ratios are against eager float32 of the same model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch

from core.precision import machine_summary, resolve_amp
from datasets.io import read_image, to_tensor
from datasets.severstal import list_images
from inference.predictor import same_size_groups
from workflows.cross_validation import load_predictor


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="NAME:CHECKPOINT.pt:MODEL.onnx[:MODEL.int8.onnx]; repeat for several models")
    parser.add_argument("--images", required=True, type=Path, help="folder of strips")
    parser.add_argument("--strips", type=int, default=16, help="strips per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    return parser.parse_args(argv)


def runtimes(spec: str) -> tuple[str, list[tuple[str, Path, list[str]]]]:
    """NAME and its (runtime, file, overrides) list from ``--model``'s value."""
    name, checkpoint, onnx_file, *int8 = spec.split(":")
    runs = [("eager fp32", Path(checkpoint), ["--predict.amp=off"])]
    bf16 = resolve_amp("auto", "cpu", key="predict.amp")
    runs.append(("eager bf16", Path(checkpoint), ["--predict.amp=bf16"]) if bf16.amp == "bf16"
                else ("eager bf16", None, [f"skipped: {bf16.reason}"]))
    runs.append(("ORT fp32", Path(onnx_file), []))
    if int8:
        runs.append(("ORT int8", Path(int8[0]), []))
    return name, runs


def strips_per_second(path: Path, overrides: list[str], strips: list[torch.Tensor], repeats: int) -> float:
    predictor, postprocess, _ = load_predictor([path], ["--predict.num_workers=0", *overrides], "cpu")

    def run(items):
        for _, images in same_size_groups(items, predictor.images_per_call):
            probs, class_probs = predictor.predict_probs(images)
            for i in range(len(images)):
                postprocess(probs[i], None if class_probs is None else class_probs[i])

    run([("warm-up", strips[0])])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run([(str(i), s) for i, s in enumerate(strips)])
        best = min(best, time.perf_counter() - started)
    return len(strips) / best


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list_images(args.images)[: args.strips]
    strips = [to_tensor(read_image(args.images / n)) for n in names]
    print(f"{machine_summary()}; ONNX Runtime {ort.__version__} ({args.threads} intra-op threads)")
    print(f"{len(strips)} strips of {args.images} ({'x'.join(map(str, strips[0].shape[1:]))}), best of "
          f"{args.repeats} repeats, post-processing included, decoding not")
    rows = []
    for spec in args.model:
        name, runs = runtimes(spec)
        base = None
        for runtime, path, overrides in runs:
            if path is None:
                print(f"{name:10s} {runtime:11s} {overrides[0]}", flush=True)
                continue
            rate = strips_per_second(path, overrides, strips, args.repeats)
            base = base or rate
            rows.append({"model": name, "runtime": runtime, "strips_per_s": rate, "vs_eager_fp32": rate / base})
            print(f"{name:10s} {runtime:11s} {rate:7.2f} strips/s  {rate / base:5.2f}x eager fp32", flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
