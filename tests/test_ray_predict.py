"""predict.py --engine ray (workflows/ray_predict.py).

Fast tests cover what runs without Ray: the image sources, URI reads, the
actor's rows against the plain run's writer, the plan and the errors. The
slow ones start a local Ray with 2 CPUs (once per module) and check that its
outputs are the plain run's byte for byte: a fresh run, a run during which
one actor is killed, and a resumed one.
"""

import builtins
import os
import runpy
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from test_predict import noise_image, save_tiny_checkpoint, write_images

import predict
from core.checkpoint import save_checkpoint
from core.config import ConfigError, RayConfig, load_config, to_dict
from datasets.io import ImageReadError, read_image, to_tensor
from datasets.severstal import RERELEASED
from datasets.synthetic import make_dataset
from inference.image_scores import ANOMALY_DIR, ANOMALY_SCORES, IMAGE_SCORES
from inference.predictor import (
    JOURNAL_DIR,
    SKIPPED,
    SUBMISSION,
    Journal,
    ResultWriter,
    read_journals,
    write_submission,
)
from models import build_model
from workflows import ray_predict
from workflows.cross_validation import load_predictor
from workflows.ray_predict import PredictWorker, image_sources, plan, ray_config, read_batch, read_source

pytestmark = pytest.mark.usefixtures("one_thread")

N_STRIPS = 10  # synthetic test strips of the slow tests


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ray_ckpt") / "model.pt", 0)


# ---------------------------------------------------------------- without Ray


def test_image_sources_from_a_folder_and_a_list_file(tmp_path):
    folder = write_images(tmp_path / "images", {"b.jpg": noise_image(8, 8), "a.png": noise_image(8, 8)})
    assert image_sources(str(folder)) == {"a.png": str(folder / "a.png"), "b.jpg": str(folder / "b.jpg")}
    listing = tmp_path / "list.txt"
    listing.write_text(f"# strips of line 3\nimages/b.jpg\n\nfile://{folder / 'a.png'}  # a URI\n")
    assert image_sources(str(listing)) == {"a.png": f"file://{folder / 'a.png'}", "b.jpg": str(tmp_path / "images/b.jpg")}
    listing.write_text(f"images/b.jpg\n{folder / 'b.jpg'}\n")
    with pytest.raises(ValueError, match=r"list.txt:2: .* has the file name of"):
        image_sources(str(listing))
    with pytest.raises(FileNotFoundError, match="no such folder or list file"):
        image_sources(str(tmp_path / "nowhere"))


def test_a_folder_uri_lists_its_images(tmp_path):
    folder = write_images(tmp_path / "images", {"a.jpg": noise_image(8, 8), "b.png": noise_image(8, 8)})
    (folder / "notes.txt").write_text("not an image")
    uri = f"file://{folder}/"
    assert image_sources(uri) == {"a.jpg": f"file://{folder}/a.jpg", "b.png": f"file://{folder}/b.png"}


def test_a_uri_reads_as_the_local_file_and_its_errors_name_it(tmp_path):
    folder = write_images(tmp_path / "images", {"a.png": noise_image(16, 24)})
    (folder / "empty.jpg").write_bytes(b"")
    assert np.array_equal(read_source(f"file://{folder}/a.png"), read_image(folder / "a.png"))
    with pytest.raises(ImageReadError, match=f"cannot read image file://{folder}/missing.png"):
        read_source(f"file://{folder}/missing.png")
    with pytest.raises(ImageReadError, match="empty"):
        read_source(f"file://{folder}/empty.jpg")


def test_the_worker_writes_what_the_plain_writer_writes(checkpoint, tmp_path):
    """The actor's rows, called here without Ray, hold the plain run's RLEs and mask file bytes; an unreadable
    image passes through as its error."""
    images = write_images(tmp_path / "images", {f"s{i}.jpg": noise_image(128, 256, seed=i) for i in range(2)})
    (images / "bad.jpg").write_bytes(b"not a jpeg")
    names = sorted(p.name for p in images.iterdir())
    rows = read_batch({"image": np.array(names, dtype=object), "source": np.array([str(images / n) for n in names])})
    assert [bool(e) for e in rows["error"]] == [n == "bad.jpg" for n in names]
    out = PredictWorker([str(checkpoint)], ["--predict.tile=128", "--predict.stride=96"], "cpu", threads=1)(rows)
    reader = PredictWorker([str(checkpoint)], ["--predict.tile=128", "--predict.stride=96"], "cpu", threads=1,
                           read=True)  # the actor that reads its own images (ray.read=workers) gives the same rows
    sources = {"image": np.array(names, dtype=object), "source": np.array([str(images / n) for n in names])}
    for key, column in reader(sources).items():
        assert [np.asarray(v).tobytes() if key == "png" else str(v) for v in column] == \
            [np.asarray(v).tobytes() if key == "png" else str(v) for v in out[key]], key

    predictor, postprocess, _ = load_predictor([checkpoint], ["--predict.tile=128", "--predict.stride=96"], "cpu")
    with Journal(tmp_path / "plain" / "rank0.jsonl") as journal:
        writer = ResultWriter(tmp_path / "plain", postprocess, journal)
        for i, name in enumerate(names):
            if name == "bad.jpg":
                continue
            image = to_tensor(np.asarray(rows["pixels"][i]))
            probs, class_probs = predictor.predict_probs(image[None])
            writer.write(name, image, probs[0], None if class_probs is None else class_probs[0])
    plain = read_journals(tmp_path / "plain")
    for i, name in enumerate(names):
        if name == "bad.jpg":
            assert "cannot decode image" in out["error"][i]
            continue
        assert [out[f"rle{c}"][i] for c in (1, 2, 3, 4)] == plain[name]["rles"]
        assert list(out["scores"][i]) == plain[name]["scores"]  # image_scores.csv's values
        assert np.isnan(out["anomaly_score"][i]) and len(out["anomaly_png"][i]) == 0  # not an anomaly model
        assert list(out["shape"][i]) == [128, 256]
        png = (tmp_path / "plain" / "masks" / f"{Path(name).stem}.png").read_bytes()
        assert np.asarray(out["png"][i]).tobytes() == png


def test_an_anomaly_models_rows_become_the_plain_runs_files(tmp_path):
    """An autoencoder through the actor and the driver's writer (no Ray):
    the same anomaly maps, anomaly_scores.csv, image_scores.csv, submission
    and mask files as the plain predict.py."""
    torch.manual_seed(0)
    cfg = load_config(None, ["--model.name=autoencoder", "--model.autoencoder.channels=[8, 16]"])
    save_checkpoint({"model": build_model(cfg).state_dict(), "ema": None, "config": to_dict(cfg), "epoch": 1,
                     "step": 1, "best_score": 0.0}, tmp_path / "ae.pt")
    images = write_images(tmp_path / "images", {f"s{i}.jpg": noise_image(64, 256, seed=i) for i in range(2)})
    (images / "bad.jpg").write_bytes(b"not a jpeg")
    flags = ["--predict.tile=64", "--predict.stride=64"]
    plain = tmp_path / "plain"
    predict.main(["--checkpoint", str(tmp_path / "ae.pt"), "--images", str(images), "--out", str(plain),
                  "--predict.num_workers=0", *flags])

    names = sorted(p.name for p in images.iterdir())
    sources = {"image": np.array(names, dtype=object), "source": np.array([str(images / n) for n in names])}
    rows = PredictWorker([str(tmp_path / "ae.pt")], flags, "cpu", threads=1, read=True)(sources)
    ray_out = tmp_path / "ray"
    with Journal(ray_out / JOURNAL_DIR / "rank0.jsonl") as journal:
        assert ray_predict._write_batch(rows, ray_out, journal) == 2
    write_submission(ray_out, names, RERELEASED, 2)
    for name in (SUBMISSION, SKIPPED, IMAGE_SCORES, ANOMALY_SCORES, "masks/s0.png", "masks/s1.png",
                 f"{ANOMALY_DIR}/s0.png", f"{ANOMALY_DIR}/s1.png"):
        assert (ray_out / name).read_bytes() == (plain / name).read_bytes(), name
    assert len(pd.read_csv(ray_out / ANOMALY_SCORES)) == 2


def test_the_plan_sizes_the_pool_and_refuses_what_would_hang():
    cpu = plan(RayConfig(), {"CPU": 2})  # CPU actors read their own images: one per CPU
    assert (cpu.workers, cpu.device, cpu.read_in_workers) == (2, "cpu", True)
    assert plan(RayConfig(num_cpus_per_worker=2), {"CPU": 7}).workers == 3
    tasks = plan(RayConfig(read="tasks"), {"CPU": 2})  # the read tasks' quarter CPU is spared
    assert (tasks.workers, tasks.read_in_workers) == (1, False)
    assert plan(RayConfig(read="tasks", num_cpus_per_worker=0.875), {"CPU": 2}).workers == 2
    gpu = plan(RayConfig(num_gpus_per_worker=1), {"CPU": 32, "GPU": 4})
    assert (gpu.workers, gpu.device, gpu.read_in_workers) == (4, "cuda", False)
    assert plan(RayConfig(num_gpus_per_worker=1, read="workers"), {"CPU": 32, "GPU": 4}).read_in_workers
    assert plan(RayConfig(num_gpus_per_worker=0.5), {"CPU": 32, "GPU": 2}).workers == 4
    with pytest.raises(ConfigError, match="the Ray cluster has 0 GPUs"):
        plan(RayConfig(num_gpus_per_worker=1), {"CPU": 8})
    with pytest.raises(ConfigError, match=r"read_cpus=0.25 need 2.25 CPUs, the Ray cluster has 2"):
        plan(RayConfig(workers=2, read="tasks"), {"CPU": 2})
    with pytest.raises(ConfigError, match="need 3 CPUs, the Ray cluster has 2"):
        plan(RayConfig(workers=3), {"CPU": 2})


def test_a_missing_ray_is_named_with_the_install_line(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        ray_predict.import_ray()


def test_predict_refuses_what_the_ray_engine_does_not_write(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="--engine ray does not take --overlays, --device=cpu"):
        predict.main(["--checkpoint", str(checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--engine", "ray", "--overlays", "--device", "cpu"])
    with pytest.raises(SystemExit, match="'ray.batch_size' must be >= 1"):
        predict.main(["--checkpoint", str(checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--engine", "ray", "--ray.batch_size=0"])


# ---------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module (predict_with_ray uses a Ray
    that is already up and leaves it running)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def strips(tmp_path_factory) -> Path:
    """N_STRIPS synthetic test strips and one corrupt file."""
    root = tmp_path_factory.mktemp("ray_strips")
    make_dataset(root, n_train=0, n_test=N_STRIPS, seed=3, workers=1, progress=False)
    images = root / "test_images"
    (images / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return images


@pytest.fixture(scope="module")
def plain_run(checkpoint, strips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    predict.main(["--checkpoint", str(checkpoint), "--images", str(strips), "--out", str(out), "--device", "cpu",
                  "--predict.num_workers=0"])
    return out


def run_ray(checkpoint, images, out: Path, *extra: str):
    return predict.main(["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                         "--engine", "ray", "--ray.batch_size=2", *extra])


def assert_same_outputs(plain: Path, other: Path) -> None:
    """Submission (rows sorted), skipped list, image scores and every mask file, byte for byte."""
    def rows(path):
        header, *body = path.read_bytes().splitlines()
        return header, sorted(body)

    assert rows(other / SUBMISSION) == rows(plain / SUBMISSION)
    assert (other / SKIPPED).read_bytes() == (plain / SKIPPED).read_bytes()
    assert (other / IMAGE_SCORES).read_bytes() == (plain / IMAGE_SCORES).read_bytes()
    assert len(pd.read_csv(plain / IMAGE_SCORES)) == N_STRIPS
    masks = sorted(p.name for p in (plain / "masks").iterdir())
    assert len(masks) == N_STRIPS and sorted(p.name for p in (other / "masks").iterdir()) == masks
    for name in masks:
        assert (other / "masks" / name).read_bytes() == (plain / "masks" / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("read", ["auto", "tasks"])  # auto: CPU actors read their own images
def test_ray_writes_the_plain_outputs(local_ray, checkpoint, strips, plain_run, tmp_path, read):
    summary = run_ray(checkpoint, strips, tmp_path, f"--ray.read={read}")
    assert (summary.n_images, summary.n_written, summary.n_predicted) == (N_STRIPS + 1, N_STRIPS, N_STRIPS)
    assert list(summary.skipped) == ["zz_corrupt.jpg"]
    assert_same_outputs(plain_run, tmp_path)


def actor_pids(name: str = "PredictWorker") -> list[int]:
    """Processes started under this one (the local Ray's workers) whose title names ``name``."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            if name.encode() in title and me in ancestors(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent's pid
        chain.append(pid)
    return chain


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_the_outputs_are_complete(local_ray, checkpoint, strips, plain_run,
                                                                   tmp_path):
    """Two actors; once two images are written, one is killed (SIGKILL): Ray starts another in its place and
    retries its batches, and every output is still the plain run's."""
    journal = tmp_path / JOURNAL_DIR / "rank0.jsonl"
    killed, seen, finished = {}, set(), threading.Event()

    def kill_one_actor():
        while not finished.is_set():
            pids = actor_pids()
            seen.update(pids)
            done = len(journal.read_text().splitlines()) if journal.exists() else 0
            if not killed and done >= 2 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], done=done, before=set(seen))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    try:
        summary = run_ray(checkpoint, strips, tmp_path, "--ray.workers=2", "--ray.num_cpus_per_worker=0.5",
                          "--ray.threads_per_worker=1", "--ray.batch_size=1")
    finally:
        finished.set()
        killer.join(timeout=5)
    assert killed and killed["done"] < N_STRIPS, f"no actor was killed mid-run: {killed}"
    assert seen - killed["before"], "no actor was started in place of the killed one"
    assert summary.n_written == N_STRIPS
    assert_same_outputs(plain_run, tmp_path)


@pytest.mark.slow
def test_resume_predicts_only_the_unfinished_images(local_ray, checkpoint, strips, plain_run, tmp_path):
    """From a list file this time: file:// URIs, read through pyarrow, and a plain path (the corrupt file, whose
    error then reads as the plain run's)."""
    listing = tmp_path / "strips.txt"
    listing.write_text("".join(f"{path}\n" if path.name == "zz_corrupt.jpg" else f"file://{path}\n"
                               for path in sorted(strips.iterdir())))
    run_ray(checkpoint, listing, tmp_path)
    journal = tmp_path / JOURNAL_DIR / "rank0.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:4]) + lines[4][:10])  # an interrupted run: 4 records and a torn line
    summary = run_ray(checkpoint, listing, tmp_path, "--resume")
    finished_before = sum('"rles"' in line for line in lines[:4])
    assert summary.n_predicted == N_STRIPS - finished_before
    assert_same_outputs(plain_run, tmp_path)


@pytest.mark.slow
@pytest.mark.cuda
def test_gpu_actors_write_what_the_plain_run_writes_on_the_gpu(local_ray, checkpoint, strips, tmp_path):
    """One actor per GPU (--ray.num_gpus_per_worker=1) against plain predict.py on cuda: every image, and masks
    that agree on all but a few pixels (GPU kernels need not be bitwise reproducible across processes)."""
    if local_ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the local Ray sees no GPU")
    plain = predict.main(["--checkpoint", str(checkpoint), "--images", str(strips), "--out", str(tmp_path / "plain"),
                          "--device", "cuda", "--predict.num_workers=0"])
    summary = run_ray(checkpoint, strips, tmp_path / "ray", "--ray.num_gpus_per_worker=1")
    assert (summary.n_written, summary.skipped) == (plain.n_written, plain.skipped)
    for mask in (tmp_path / "plain" / "masks").iterdir():
        ours, theirs = (cv2.imread(str(folder / "masks" / mask.name), cv2.IMREAD_UNCHANGED)
                        for folder in (tmp_path / "ray", tmp_path / "plain"))
        assert (ours == theirs).mean() > 0.999, mask.name


def test_the_engine_bench_runs_the_defaults_and_each_variant_with_the_shared_overrides():
    bench = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "bench_predict.py"))
    args = bench["parse_args"](["--engines", "--ray.batch_size=8", "--ray-variant",
                                "tasks=--ray.read=tasks --ray.num_cpus_per_worker=0.875"])
    assert bench["ray_variants"](args) == {
        "ray": ["--ray.batch_size=8"],
        "tasks": ["--ray.batch_size=8", "--ray.read=tasks", "--ray.num_cpus_per_worker=0.875"]}
    with pytest.raises(ConfigError, match="ray.read"):
        ray_config(["--ray.read=nowhere"])
