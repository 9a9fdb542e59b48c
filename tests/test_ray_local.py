"""predict.py --engine ray as a user runs it: no Ray is up, so the run
starts a local one itself (``ray.address`` empty) and shuts it down. A
separate module from test_ray_predict.py, whose module-wide Ray would
otherwise be running beside it."""

import os
import subprocess
import sys

import pytest
from test_ray_predict import assert_same_outputs, checkpoint, plain_run, strips  # noqa: F401 (fixtures)
from test_train import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_predict_py_starts_its_own_local_ray_and_writes_the_plain_outputs(checkpoint, strips, plain_run,  # noqa: F811
                                                                          tmp_path):
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join a cluster by accident
    done = subprocess.run(
        [sys.executable, "predict.py", "--checkpoint", str(checkpoint), "--images", str(strips), "--out",
         str(tmp_path), "--engine", "ray", "--ray.num_cpus=2", "--ray.object_store_mb=256", "--ray.batch_size=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_outputs(plain_run, tmp_path)
