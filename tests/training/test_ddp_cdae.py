"""CDAE's trainer under DistributedDataParallel (gloo, CPU): two processes equal one with the global batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surfharm import training
from surfharm.training.cdae import CDAE_CHECKPOINT_FORMAT, CDAEConfig, CDAETrainer

from ddp_launch import run_two_processes  # beside this file (pytest puts tests/training on sys.path)

LEVEL, V = 2, 162


def data(n: int = 8, seed: int = 0):
    """Maps of three sites (indices 0, 1, 2 in turn) with a site offset; a medial wall at the first vertices."""
    gen = torch.Generator().manual_seed(seed)
    sites = torch.arange(n) % 3
    maps = torch.randn(n, 1, V, generator=gen) + 0.5 * sites[:, None, None]
    mask = torch.ones(n, V, dtype=torch.bool)
    mask[:, :6] = False
    maps[:, :, :6] = 0
    return maps, mask, sites


def config(**kwargs) -> CDAEConfig:
    # 32 base channels (scanner encoder from 8): with one channel per GroupNorm group the bias before it has
    # a true gradient of 0, whose rounding noise Adam scales up to +-lr in either process (as in the S2SGAN
    # DDP test).
    return CDAEConfig(**{"level": LEVEL, "n_sites": 3, "base_channels": 32, "max_steps": 3, "schedule": "constant",
                         **kwargs})


DDP_SCRIPT = """
import gc, sys, torch
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
torch.distributed.init_process_group("gloo")
from test_ddp_cdae import config, data
from surfharm.training.cdae import CDAETrainer
trainer = CDAETrainer(config(batch_size=2, train_targets={targets!r}), *data(), checkpoint_path={path!r})
trainer.train()
del trainer                  # freed before its process group: see surfharm.training.trainer
gc.collect()
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["reference", "all"])
def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path, targets):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch was built without the gloo backend")
    path = tmp_path / "ddp.safetensors"
    script = tmp_path / "ddp_train.py"
    repo = str(Path(__file__).resolve().parents[2])
    script.write_text(DDP_SCRIPT.format(repo=repo, tests=str(Path(__file__).parent), path=str(path),
                                        targets=targets))
    run_two_processes(script, 240, "3 steps")
    tensors, meta = training.read_safetensors(path, expected_format=CDAE_CHECKPOINT_FORMAT)
    assert meta["step"] == 3

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = CDAETrainer(config(batch_size=4, train_targets=targets), *data())
        single.train()
    finally:
        torch.set_num_threads(before)
    # The losses each process logged (averaged over the two) are the global batch's.
    for mine, theirs in zip(single.history, meta["history"]):
        for key in ("G", "rec", "corr", "cycle", "adv"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-4, abs=1e-6), key
    # Weights: Adam turns a gradient of rounding noise (a true 0) into a step of up to lr; 1e-4 < lr = 5e-4.
    for key, value in single.state_tensors().items():
        if key.startswith(("network.", "classifier.")):
            torch.testing.assert_close(tensors[key], value, rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
