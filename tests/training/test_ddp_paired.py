"""Paired U-Nets' trainer under DistributedDataParallel (gloo, CPU), with batches that lack a scanner.

A process whose batch holds no scan of a scanner computes no gradient for that scanner's network; the
run must still finish (not wait forever for that gradient) and equal one process with the global batch,
also at steps where the whole global batch lacks a scanner (that network then does not step at all).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from surfharm import training
from surfharm.training.paired import PAIRED_CHECKPOINT_FORMAT, PairedConfig, PairedTrainer

from ddp_launch import run_two_processes  # beside this file (pytest puts tests/training on sys.path)

LEVEL, V = 2, 162
STEPS = 4
#: Seconds the two processes may take (a healthy run takes a few); longer means a collective waits forever.
DDP_TIMEOUT = 45


def data(seed: int = 0):
    """Scans of four sites (0: the reference) at level 2, with the pairs and the scans without a partner.

    Eight subjects scanned on the reference; subjects 0-3 also on site 1, 4-7 on site 2, 0-1 on site 3
    (10 pairs); two more site-1 scans without a partner. Returns (maps (n, 1, V), mask (n, V), sites (n,),
    pairs (10, 2), unpaired (2,)).
    """
    gen = torch.Generator().manual_seed(seed)
    subject, sites = [], []
    for k, members in ((0, range(8)), (1, range(4)), (2, range(4, 8)), (3, range(2)), (1, (8, 9))):
        subject += list(members)
        sites += [k] * len(members)
    subject, sites = torch.tensor(subject), torch.tensor(sites)
    truth = 2.5 + 0.3 * torch.randn(10, V, generator=gen)
    maps = (truth[subject] * (1 + 0.1 * sites[:, None]) + 0.2 * sites[:, None]
            + 0.02 * torch.randn(len(sites), V, generator=gen))[:, None]
    maps = (maps - maps.mean(0)) / maps.std(0)
    mask = torch.ones(len(sites), V, dtype=torch.bool)
    mask[:, :6] = False
    maps[:, :, :6] = 0
    reference = {int(s): i for i, (s, k) in enumerate(zip(subject, sites)) if k == 0}
    pairs = np.array([(i, reference[int(s)]) for i, (s, k) in enumerate(zip(subject, sites))
                      if k != 0 and int(s) in reference])
    unpaired = np.array([i for i, s in enumerate(subject) if int(s) not in reference])
    return maps, mask, sites, pairs, unpaired


def config(**kwargs) -> PairedConfig:
    # 8 base channels: GroupNorm's 4 groups then hold 2 channels each, so no bias has a true gradient of 0
    # whose rounding noise Adam would scale up to +-lr differently in either process.
    return PairedConfig(**{"level": LEVEL, "n_sites": 4, "depth": 3, "base_channels": 8, "max_steps": STEPS,
                           "schedule": "constant", "unpaired": 0.5, "seed": 0, "amp": False, **kwargs})


DDP_SCRIPT = """
import datetime, gc, sys, torch
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds={timeout}))
from test_ddp_paired import config, data
from surfharm.training.paired import PairedTrainer
trainer = PairedTrainer(config(batch_size=2), *data(), checkpoint_path={path!r})
trainer.train()
del trainer                  # freed before its process group: see surfharm.training.trainer
gc.collect()
torch.distributed.destroy_process_group()
"""


def sites_per_process(trainer: PairedTrainer, step: int) -> list[set[int]]:
    """Sites in each of the two processes' batches at ``step`` (pairs and unpaired scans), read off the
    one-process ``trainer`` whose batch is the global batch: the first half is process 0's."""
    rows = [trainer.pairs[trainer.batch_rows(step, len(trainer.pairs), 0), 0],
            trainer.unpaired[trainer.batch_rows(step, len(trainer.unpaired), 1)]]
    half = trainer.config.batch_size // 2
    return [{int(k) for r in rows for k in trainer.sites[r[p * half:(p + 1) * half]]} for p in range(2)]


@pytest.mark.slow
def test_ddp_with_a_scanner_missing_from_a_batch_equals_one_process(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch was built without the gloo backend")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = PairedTrainer(config(batch_size=4), *data())
        present = [sites_per_process(single, step) for step in range(STEPS)]
        single.train()
    finally:
        torch.set_num_threads(before)
    networks = {1, 2, 3}
    # The case in question occurs: a process's batch lacks a scanner the other's holds; and a scanner is
    # absent from a whole global batch (its network must not step, as on one process).
    assert any((networks - mine) & theirs for p in present for mine, theirs in (p, p[::-1]))
    assert any(networks - (p[0] | p[1]) for p in present)

    path = tmp_path / "ddp.safetensors"
    script = tmp_path / "ddp_train.py"
    repo = str(Path(__file__).resolve().parents[2])
    script.write_text(DDP_SCRIPT.format(repo=repo, tests=str(Path(__file__).parent), path=str(path),
                                        timeout=DDP_TIMEOUT))
    run_two_processes(script, DDP_TIMEOUT, f"{STEPS} steps")
    tensors, meta = training.read_safetensors(path, expected_format=PAIRED_CHECKPOINT_FORMAT)
    assert meta["step"] == STEPS

    # The losses each process logged (averaged over the two) are the global batch's.
    for mine, theirs in zip(single.history, meta["history"], strict=True):
        for key in ("loss", "l1", "corr", "unpaired"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-5, abs=1e-7), key
    # Weights and Adam's moments: rounding differences only (sums over 2 x 2 scans, not 4).
    state = single.state_tensors()
    assert set(tensors) >= set(state)
    for key, value in state.items():
        torch.testing.assert_close(tensors[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
