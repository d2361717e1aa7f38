"""The S2SGAN trainer: learning, exact resume, checkpoints, NaN stop, DistributedDataParallel."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from surfharm import training
from surfharm.training import CycleGANTrainer, DomainData, TrainingConfig, TrainingDivergedError
from surfharm.training import trainer as trainer_module

from ddp_launch import run_two_processes  # beside this file (pytest puts tests/training on sys.path)

LEVEL, V = 3, 642


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny networks: one thread is faster than several on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def domains(n_x=4, n_y=5, seed=0):
    """Two small domains: Y is a non-linear function of X-like maps plus an offset."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_x, 1, V, generator=gen)
    y = torch.tanh(torch.randn(n_y, 1, V, generator=gen)) * 1.5 + 0.3
    mask_x = torch.ones(n_x, V, dtype=torch.bool)
    mask_x[:, :12] = False                       # a "medial wall": zero and outside the losses
    x[:, :, :12] = 0
    return DomainData(x, mask_x), DomainData(y, torch.ones(n_y, V, dtype=torch.bool))


def tiny_config(**changes) -> TrainingConfig:
    settings = dict(level=LEVEL, depth=2, base_channels=4, disc_channels=4, disc_down=2, max_steps=6, pool_size=2)
    settings.update(changes)
    return TrainingConfig(**settings)


@pytest.mark.slow
def test_losses_fall_and_cycle_is_learned():
    # Without the residual start the generators begin far from invertible: the cycle loss must fall.
    config = tiny_config(residual=False, lr=5e-3, max_steps=40, batch_size=2, schedule="constant")
    trainer = CycleGANTrainer(config, *domains())
    first = trainer.train_step()
    history = trainer.train()
    assert history[-1]["cycle"] < 0.6 * first["cycle"]
    assert history[-1]["G"] < first["G"]
    assert all(np.isfinite(h["D"]) for h in history)


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    config = tiny_config()
    straight = CycleGANTrainer(config, *domains())
    straight.train()

    path = tmp_path / "run" / "checkpoint.safetensors"
    path.parent.mkdir()
    first = CycleGANTrainer(config, *domains(), checkpoint_path=path)
    first.train(until_step=3)
    assert first.step == 3 and path.exists() and path.with_suffix(".json").exists()
    resumed = CycleGANTrainer(config, *domains(), checkpoint_path=path)
    resumed.load_checkpoint(path)
    assert resumed.step == 3 and len(resumed.pool_x.images) == 2
    resumed.train()

    a, b = straight.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.mark.slow
def test_checkpoint_holds_config_and_extra(tmp_path):
    path = tmp_path / "ck.safetensors"
    extra = lambda: ({"mean": torch.arange(3.0)}, {"sites": ["B", "A"], "level": LEVEL})  # noqa: E731
    trainer = CycleGANTrainer(tiny_config(max_steps=2), *domains(), checkpoint_path=path, checkpoint_extra=extra)
    trainer.train()
    tensors, meta = training.read_safetensors(path, expected_format=training.CHECKPOINT_FORMAT)
    assert meta["step"] == 2 and meta["config"]["level"] == LEVEL
    assert meta["extra"]["sites"] == ["B", "A"]
    assert torch.equal(tensors["extra.mean"], torch.arange(3.0))
    assert any(k.startswith("opt_g.state.") and k.endswith("exp_avg_sq") for k in tensors)
    assert json.loads(path.with_suffix(".json").read_text())["step"] == 2


@pytest.mark.slow
def test_checkpoint_of_other_config_is_refused(tmp_path):
    path = tmp_path / "ck.safetensors"
    CycleGANTrainer(tiny_config(max_steps=1), *domains(), checkpoint_path=path).train()
    other = CycleGANTrainer(tiny_config(base_channels=8), *domains())
    with pytest.raises(ValueError, match="base_channels"):
        other.load_checkpoint(path)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    trainer = CycleGANTrainer(tiny_config(max_steps=10), *domains(), checkpoint_path=path, checkpoint_every=2)
    real = trainer_module.lsgan_loss
    calls = {"n": 0}

    def poisoned(score, real_label):
        calls["n"] += 1
        value = real(score, real_label)
        return value * float("nan") if trainer.step >= 5 else value

    monkeypatch.setattr(trainer_module, "lsgan_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"step 5.*non-finite.*ck.safetensors"):
        trainer.train()
    assert trainer.step == 5                      # the bad step was not applied
    _, meta = training.read_safetensors(path, expected_format=training.CHECKPOINT_FORMAT)
    assert meta["step"] == 4
    assert all(torch.isfinite(t).all() for t in trainer.state_tensors().values() if t.is_floating_point())


def test_bad_config_and_data_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        tiny_config(schedule="linear")
    x, y = domains()
    with pytest.raises(ValueError, match="level 4"):
        CycleGANTrainer(tiny_config(level=4), x, y)


def test_step_schedule_follows_milestones():
    trainer = CycleGANTrainer(tiny_config(schedule="step", milestones=(1, 2), lr=1e-3, lr_gamma=0.5), *domains())
    per_epoch = trainer.steps_per_epoch
    assert trainer.lr_at(0) == pytest.approx(1e-3)
    assert trainer.lr_at(per_epoch) == pytest.approx(5e-4)
    assert trainer.lr_at(2 * per_epoch) == pytest.approx(2.5e-4)


DDP_SCRIPT = """
import gc, sys, torch
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
torch.distributed.init_process_group("gloo")
from test_training import domains, tiny_config
from surfharm.training import CycleGANTrainer
trainer = CycleGANTrainer(tiny_config(batch_size=1, pool_size=0, max_steps=3, base_channels=8), *domains(),
                          checkpoint_path={path!r})
trainer.train()
del trainer                  # freed before its process group: see surfharm.training.trainer
gc.collect()
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch was built without the gloo backend")
    path = tmp_path / "ddp.safetensors"
    script = tmp_path / "ddp_train.py"
    repo = str(Path(__file__).resolve().parents[2])
    script.write_text(DDP_SCRIPT.format(repo=repo, tests=str(Path(__file__).parent), path=str(path)))
    run_two_processes(script, 240, "3 steps")
    tensors, meta = training.read_safetensors(path, expected_format=training.CHECKPOINT_FORMAT)
    assert meta["step"] == 3

    # 8 base channels: with one channel per GroupNorm group (4) the bias of the convolution before
    # it has a true gradient of 0, whose rounding noise Adam scales up to +-lr in either process.
    single = CycleGANTrainer(tiny_config(batch_size=2, pool_size=0, max_steps=3, base_channels=8), *domains())
    single.train()
    for key, value in single.state_tensors().items():
        if key.startswith(("generators.", "discriminators.")):
            torch.testing.assert_close(tensors[key], value, rtol=1e-4, atol=1e-5, msg=key)
