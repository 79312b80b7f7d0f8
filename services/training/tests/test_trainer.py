"""The trainer on its own: determinism, cancellation, and the torchrun path (2 CPU processes, gloo)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from lineloop.training.distributed import train_distributed
from lineloop.training.job import Cancelled, Split, TrainJob, TrainParams
from lineloop.training.trainer import train
from lineloop.vision import AppleRenderer, encode_png

CLASSES = ["bruise", "ok", "rot", "scab"]
TINY = TrainParams(epochs=2, batch_size=8, width=4, input_size=32, patience=2)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> TrainJob:
    root = tmp_path_factory.mktemp("frames")
    renderer = AppleRenderer(size=32, seed=5)
    splits = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for ci, label in enumerate(CLASSES):
        for i in range(6):
            split = "train" if i < 4 else "val" if i < 5 else "test"
            path = root / f"{label}-{i}.png"
            path.write_bytes(encode_png(renderer.render(ci * 100 + i, label=label).image))
            splits[split][0].append(path)
            splits[split][1].append(ci)
    return TrainJob(classes=CLASSES, params=TINY, threads=1, **{k: Split(*v) for k, v in splits.items()})


def test_same_seed_same_model_and_a_cancel_stops_within_a_batch(job):
    first, second = train(job), train(job)
    assert [e.train_loss for e in first.epochs] == [e.train_loss for e in second.epochs]
    assert all(e.frames_per_s > 0 and 0 <= e.data_share <= 1 for e in first.epochs)
    assert first.test.samples == 4 and first.world_size == 1 and first.device == "cpu"

    batches = []
    with pytest.raises(Cancelled):
        train(job, should_stop=lambda: batches.append(1) or len(batches) > 2)
    assert len(batches) == 3


async def test_torchrun_path_trains_with_two_processes(job):
    epochs = []
    result = await train_distributed(job, 2, on_epoch=epochs.append, cancel=threading.Event())
    assert result.world_size == 2
    assert [e.epoch for e in epochs] == [e.epoch for e in result.epochs] and len(epochs) >= 1
    assert result.test.samples == 4 and list(result.model.spec.classes) == CLASSES


def test_early_stopping_waits_for_the_annealing_half_and_keeps_the_best_epoch(job):
    result = train(dataclasses.replace(job, params=dataclasses.replace(TINY, epochs=8, patience=1)))
    ran = len(result.epochs)
    assert ran >= 5  # never before epochs // 2 + patience: the one-cycle rate is still high
    assert result.stopped_early == (ran < 8)
    assert result.epochs[result.best_epoch - 1].val_loss <= min(e.val_loss for e in result.epochs) + 1e-4


@pytest.mark.gpu
def test_the_same_code_trains_on_cuda(job):
    result = train(job)
    assert result.device.startswith("cuda") and result.test.samples == 4
    assert next(result.model.parameters()).device.type == "cpu"  # handed back ready for export
