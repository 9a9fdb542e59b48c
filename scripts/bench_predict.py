"""Benchmark tiled inference on 1600x256 strips (CPU).

    python scripts/bench_predict.py [--strips 2] [--repeats 3] [--threads 1 --cpu-time]
    python scripts/bench_predict.py --engines [--engine-strips 32] [--checkpoint RUN/best.pt] [--ray.key=value ...]
        [--ray-variant NAME='--ray.key=value ...' ...]

1. Time per strip of tiled inference (256 tiles, stride 224, gaussian
   blend) over a whole-strip pass, on an smp Unet resnet18 (weights None,
   eval). 7 tiles of 256 cover 1792 columns for 1600, so the arithmetic
   floor is 7 * 256 / 1600 = 1.12.
2. This tiler over MONAI's sliding_window_inference with the same windows
   (overlap 1 - 224/256: MONAI's scan interval int(256 * 0.875) = 224 gives
   the same 7 windows, checked by counting tiles) and the same gaussian
   weights; on the Unet, and on a pointwise model where only the tiler's
   own overhead is timed.
3. Peak resident memory (VmHWM, each in a fresh subprocess that
   imports only torch and the tiler) streaming 100 and 1,000 random strips
   through predict_tiled in batches, with a per-pixel model (the tiler's
   memory, not a network's, is measured); also the growth over the
   process's RSS before streaming (imports, model).
Times are the minimum over interleaved repeats, after one warm-up each.

``--engines`` instead times the whole of ``predict.py`` (read, predict,
post-process, write) on the same synthetic strips in one run: the plain
engine (this process: torch threads on every core, DataLoader readers) and
``--engine ray`` on a local Ray started once beforehand (its start-up is
printed apart; each Ray run includes starting its actors and loading the
models), interleaved, each the best of ``--repeats``. Prints strips/s of
each and Ray over plain. Ray runs with predict.py's own defaults (what a
user gets); ``--ray.key=value`` arguments override them for every Ray run,
and each ``--ray-variant NAME='--ray.k=v ...'`` adds a run of its own, so
layouts compare side by side. Without --checkpoint the model is
configs/demo_cpu.yaml's, randomly initialised.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import predict
from core.cli import CONFIGS
from core.config import load_config
from core.precision import machine_summary
from datasets.synthetic import make_dataset
from inference.tiling import predict_full_frame, predict_tiled
from models import save_random_checkpoint
from workflows.ray_predict import import_ray, plan, ray_config

TILE, STRIDE, SIGMA_SCALE = 256, 224, 0.125
STRIP = (256, 1600)  # (H, W)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strips", type=int, default=2, help="strips per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with the process's CPU time, not wall time (steadier on a shared machine; use --threads 1)")
    p.add_argument("--batch-size", type=int, default=16, help="tiles per forward")
    p.add_argument("--stream-batch", type=int, default=8, help="strips per predict_tiled call when streaming")
    p.add_argument("--memory-worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--engines", action="store_true", help="predict.py plain vs --engine ray on the same strips")
    p.add_argument("--engine-strips", type=int, default=32, help="synthetic 1600x256 strips per --engines run")
    p.add_argument("--checkpoint", type=Path, help="--engines: default configs/demo_cpu.yaml's model, random weights")
    p.add_argument("--ray-variant", action="append", default=[], metavar="NAME='--ray.k=v ...'",
                   help="--engines: one more Ray run with these settings over the defaults (repeatable)")
    args, ray_overrides = p.parse_known_args(argv)
    bad = [o for o in ray_overrides if not o.startswith("--ray.") or "=" not in o]
    if bad:
        p.error(f"unrecognised arguments {bad}: overrides look like --ray.key=value")
    args.ray_overrides = ray_overrides
    return args


def unet_fn():
    import segmentation_models_pytorch as smp  # here, so that memory workers import only torch

    model = smp.Unet("resnet18", encoder_weights=None, classes=4).eval()
    return lambda x: torch.sigmoid(model(x))


def pointwise_fn():
    """A per-pixel 4-class model costing next to nothing (a 1x1 conv would
    not: torch's CPU conv is very slow on batches of 3-channel tiles)."""
    weight = torch.randn(4, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    return lambda x: torch.sigmoid((x[:, None] * weight).sum(2))


def monai_tiled(model_fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    from monai.inferers import sliding_window_inference  # here, as smp above

    with torch.inference_mode():
        return sliding_window_inference(images, (TILE, TILE), batch_size, model_fn, overlap=1 - STRIDE / TILE,
                                        mode="gaussian", sigma_scale=SIGMA_SCALE)


def min_times(runs: dict, repeats: int, clock) -> dict[str, float]:
    """Minimum time by ``clock`` of each callable over interleaved repeats
    (the first call is a warm-up)."""
    best = {name: float("inf") for name in runs}
    for repeat in range(repeats + 1):
        for name, fn in runs.items():
            start = clock()
            fn()
            if repeat:
                best[name] = min(best[name], clock() - start)
    return best


def count_tiles(model_fn, counter: list):
    def counted(x):
        counter.append(x.shape[0])
        return model_fn(x)
    return counted


def check_same_windows(model_fn, images: torch.Tensor, batch_size: int) -> tuple[int, int, float]:
    """(tiles per strip here, tiles per strip in MONAI, max |difference| of the outputs)."""
    ours, theirs = [], []
    a = predict_tiled(count_tiles(model_fn, ours), images, TILE, STRIDE, "gaussian", batch_size, SIGMA_SCALE)
    b = monai_tiled(count_tiles(model_fn, theirs), images, batch_size)
    n = images.shape[0]
    return sum(ours) // n, sum(theirs) // n, float((a - b).abs().max())


def speed(model_fn, images: torch.Tensor, args, full_frame: bool) -> dict[str, float]:
    """Seconds per strip of each method."""
    batch_size = args.batch_size
    runs = {
        "tiled": lambda: predict_tiled(model_fn, images, TILE, STRIDE, "gaussian", batch_size, SIGMA_SCALE),
        "monai": lambda: monai_tiled(model_fn, images, batch_size),
    }
    if full_frame:
        runs["full"] = lambda: predict_full_frame(model_fn, images)
    clock = time.process_time if args.cpu_time else time.perf_counter
    return {k: v / images.shape[0] for k, v in min_times(runs, args.repeats, clock).items()}


def random_strips(n: int, batch: int):
    generator = torch.Generator().manual_seed(0)
    for start in range(0, n, batch):
        yield torch.rand(min(batch, n - start), 3, *STRIP, generator=generator)


def max_rss_mib() -> float:
    """This process's peak resident memory, MiB (Linux). VmHWM, not
    ru_maxrss: Linux carries ru_maxrss over fork + exec, so a fresh worker
    would report its parent's peak when that is higher."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024  # the line reads "VmHWM: <n> kB"


def memory_worker(n_strips: int, batch: int, batch_size: int) -> None:
    """Stream ``n_strips`` through predict_tiled; print the peak RSS (MiB)
    before and after streaming."""
    torch.set_num_threads(1)
    model_fn = pointwise_fn()
    before = max_rss_mib()
    for images in random_strips(n_strips, batch):
        predict_tiled(model_fn, images, TILE, STRIDE, "gaussian", batch_size).mean()  # used, as a caller would
    print(before, max_rss_mib())


def peak_rss_mib(n_strips: int, args) -> tuple[float, float]:
    """(peak RSS before streaming, peak RSS after) of a fresh worker, MiB."""
    cmd = [sys.executable, __file__, "--memory-worker", str(n_strips), "--stream-batch", str(args.stream_batch),
           "--batch-size", str(args.batch_size)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    before, after = run.stdout.split()[-2:]
    return float(before), float(after)


def print_table(t_unet: dict, t_point: dict, rss: dict) -> None:
    rows = [
        ("Unet r18 s/strip: full frame | tiled | MONAI",
         f"{t_unet['full']:.3f} | {t_unet['tiled']:.3f} | {t_unet['monai']:.3f}", ""),
        ("tiled / full frame (Unet r18)", f"{t_unet['tiled'] / t_unet['full']:.3f}", "<= 1.25 (floor 1.12)"),
        ("tiled / MONAI (Unet r18)", f"{t_unet['tiled'] / t_unet['monai']:.3f}", "<= 1.00"),
        ("tiled / MONAI (pointwise: tiler overhead)", f"{t_point['tiled'] / t_point['monai']:.3f}", "<= 1.00"),
        ("peak RSS MiB: 100 | 1000 strips", f"{rss[100][1]:.0f} | {rss[1000][1]:.0f}", ""),
        ("  growth while streaming MiB: 100 | 1000",
         f"{rss[100][1] - rss[100][0]:.0f} | {rss[1000][1] - rss[1000][0]:.0f}", ""),
        ("peak RSS 1000 / 100 strips", f"{rss[1000][1] / rss[100][1]:.3f}", "<= 1.10"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'value':>23}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>23}  {target}")


def demo_checkpoint(folder: Path) -> Path:
    """configs/demo_cpu.yaml's model with seeded random weights."""
    return save_random_checkpoint(load_config(CONFIGS / "demo_cpu.yaml"), folder / "demo_random.pt")


def ray_variants(args) -> dict[str, list[str]]:
    """Name -> the ``--ray.*`` arguments of each Ray run: Ray's defaults
    (``ray``), then each ``--ray-variant``; the free ``--ray.*`` arguments
    apply to all of them."""
    variants = {"ray": []}
    for spec in args.ray_variant:
        name, _, extra = spec.partition("=")
        variants[name] = extra.split()
    return {name: [*args.ray_overrides, *extra] for name, extra in variants.items()}


def engines(args) -> None:
    """predict.py plain vs --engine ray on the same strips, interleaved: strips/s and the ratios."""
    ray = import_ray()
    variants = ray_variants(args)
    for extra in variants.values():
        ray_config(extra)  # a bad key fails here, before any timing
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset(tmp / "data", n_train=0, n_test=args.engine_strips, seed=0, workers=1, progress=False)
        checkpoint = args.checkpoint or demo_checkpoint(tmp)
        common = ["--checkpoint", str(checkpoint), "--images", str(tmp / "data" / "test_images")]
        runs = {"plain": lambda: predict.main([*common, "--out", str(tmp / "plain")])}
        for name, extra in variants.items():
            runs[name] = lambda name=name, extra=extra: predict.main(
                [*common, "--out", str(tmp / name), "--engine", "ray", *extra])
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=512 * 2**20,
                 log_to_driver=False)
        ray_start = time.perf_counter() - started
        layouts = {name: plan(ray_config(extra), ray.cluster_resources()) for name, extra in variants.items()}
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
        ray.shutdown()
        plain = (tmp / "plain" / "submission.csv").read_bytes()
        same = {name: (tmp / name / "submission.csv").read_bytes() == plain for name in variants}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{machine_summary()}; load average {load}; {args.engine_strips} strips of 1600x256, "
          f"{checkpoint if args.checkpoint else 'demo_cpu.yaml model (random weights)'}, best wall time of "
          f"{args.repeats} interleaved runs of predict.py each; local Ray start-up {ray_start:.1f} s (not counted)")
    rate = {name: args.engine_strips / t for name, t in best.items()}
    print(f"{'engine':<12} {'strips/s':>9} {'s/run':>7} {'/ plain':>8}  layout")
    print(f"{'plain':<12} {rate['plain']:>9.2f} {best['plain']:>7.1f} {1:>8.3f}  this process, "
          f"{torch.get_num_threads()} torch threads, DataLoader readers")
    for name, extra in variants.items():
        cfg, layout = ray_config(extra), layouts[name]
        reads = "actors read" if layout.read_in_workers else f"read tasks of {cfg.read_cpus:g} CPU"
        print(f"{name:<12} {rate[name]:>9.2f} {best[name]:>7.1f} {rate[name] / rate['plain']:>8.3f}  "
              f"{layout.workers} {layout.device} actors x {cfg.threads_per_worker or 'Ray-chosen'} torch threads, "
              f"{cfg.num_cpus_per_worker:g} CPUs each, {reads}, batches of {cfg.batch_size}; "
              f"submission identical to plain: {'yes' if same[name] else 'NO'}")
    print("target on two cores: ray / plain >= 0.8")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        return memory_worker(args.memory_worker, args.stream_batch, args.batch_size)
    if args.engines:
        return engines(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.strips, 3, *STRIP)
    unet, pointwise = unet_fn(), pointwise_fn()
    ours, theirs, diff = check_same_windows(unet, images[:1], args.batch_size)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    clock = "CPU" if args.cpu_time else "wall"
    print(f"{machine_summary()}, float32 (no autocast); load average {load} (wall times are noisy on a busy machine); "
          f"{args.strips} strips of {STRIP[1]}x{STRIP[0]} per call, min {clock} time of {args.repeats} repeats")
    print(f"windows per strip: this tiler {ours}, MONAI {theirs}; max |difference| {diff:.1e}")
    t_unet = speed(unet, images, args, full_frame=True)
    t_point = speed(pointwise, images, args, full_frame=False)
    rss = {n: peak_rss_mib(n, args) for n in (100, 1000)}
    print_table(t_unet, t_point, rss)


if __name__ == "__main__":
    main()
