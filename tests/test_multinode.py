"""Multi-node training, on one machine: two torchrun launchers, each a
"node" of one process, meet at a c10d rendezvous on the loopback (gloo) and
train one short epoch together, as two machines would (README: training on
several machines)."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
from test_train import REPO, tiny_args

from core.checkpoint import load_checkpoint

# train.py as torchrun starts it, recording what each rank did: the checkpoints it saved and a digest of the
# weights it ended with (the trainer's raw model, which last.pt stores)
RECORDING_TRAIN = """
import hashlib, json, os, sys
import torch
import train
from training import trainer

saved = []
save = trainer.save_checkpoint
def recording_save(state, path):
    saved.append(str(path))
    save(state, path)
trainer.save_checkpoint = recording_save

fit = trainer.Trainer.fit
def recording_fit(self):
    record = fit(self)
    digest = hashlib.sha256()
    for name, tensor in sorted(self.raw_model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    report = {"digest": digest.hexdigest(), "saved": saved, "world_size": torch.distributed.get_world_size()}
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(report, f)
    return record
trainer.Trainer.fit = recording_fit

train.main(sys.argv[2:])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_two_nodes_on_the_loopback_train_one_model_and_save_it_once(tiny_data, tmp_path):
    script, reports, out = tmp_path / "recording_train.py", tmp_path / "reports", tmp_path / "run"
    script.write_text(RECORDING_TRAIN)
    reports.mkdir()
    args = tiny_args(tiny_data, out, "--train.epochs=1", "--train.amp=off")
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                               "--rdzv_id=two-nodes", str(script), str(reports), *args],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = []
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout[-2000:] + stderr[-6000:]

    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], "the launchers trained apart, not as one job"
    assert ranks[0]["digest"] == ranks[1]["digest"], "the ranks ended with different weights"
    assert ranks[1]["saved"] == [] and ranks[0]["saved"], "only rank 0 saves"
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    assert state_digest(load_checkpoint(out / "last.pt")["model"]) == ranks[0]["digest"]
    assert sum(stdout.count("epoch 1/1") for stdout, _ in outputs) == 1  # one report, from rank 0
