"""One training run: fit the inspection net, early-stop on val, evaluate on test.

The same code runs on CPU, on one GPU, and under torchrun on several
(DistributedDataParallel; rank 0 reports). It never touches the database or the
bus: the service's worker feeds it cached frame paths and gets a `TrainResult`.
`should_stop()` is polled every batch, so a cancel takes effect within one batch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from lineloop.model.metrics import Evaluation, evaluate
from lineloop.model.net import InspectionNet, ModelSpec, from_checkpoint
from lineloop.training.data import EpochSampler, FrameDataset, class_weights
from lineloop.training.job import Cancelled, EpochResult, Split, TrainJob

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: InspectionNet
    epochs: list[EpochResult]
    best_epoch: int
    stopped_early: bool
    test: Evaluation
    val: Evaluation
    device: str
    world_size: int
    timings: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "") -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(
    job: TrainJob,
    *,
    on_epoch: Callable[[EpochResult], None] = lambda e: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainResult:
    started = time.perf_counter()
    p = job.params
    rank, world = _distributed()
    device = pick_device(job.device)
    if job.threads:
        torch.set_num_threads(job.threads)
    seed_everything(p.seed + rank)
    if len(job.train.paths) == 0 or len(job.val.paths) == 0 or len(job.test.paths) == 0:
        raise ValueError("every split (train, val, test) needs at least one frame")

    if job.init_checkpoint is not None:
        model = from_checkpoint(job.init_checkpoint)
        if list(model.spec.classes) != job.classes:
            raise ValueError(f"warm-start classes {list(model.spec.classes)} differ from {job.classes}")
        lr = p.lr * p.warm_lr_scale
    else:
        model = InspectionNet(ModelSpec(classes=tuple(job.classes), width=p.width, input_size=p.input_size))
        lr = p.lr
    size = model.spec.input_size
    model.to(device)
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_ds = FrameDataset(job.train.paths, job.train.labels, size, augment=True, seed=p.seed)
    loader_gen = torch.Generator().manual_seed(p.seed)
    inner = DistributedSampler(train_ds, seed=p.seed) if world > 1 else RandomSampler(train_ds, generator=loader_gen)
    sampler = EpochSampler(inner, len(train_ds))
    workers = max(0, job.num_workers)
    # forkserver, not fork: the service process runs gRPC and Kafka threads a forked child must not inherit.
    loader_opts = dict(num_workers=workers, pin_memory=device.type == "cuda")
    if workers:
        loader_opts.update(persistent_workers=True, multiprocessing_context="forkserver", prefetch_factor=4)
    train_loader = DataLoader(train_ds, batch_size=p.batch_size, sampler=sampler,
                              drop_last=len(train_ds) > p.batch_size, **loader_opts)
    val_loader = DataLoader(FrameDataset(job.val.paths, job.val.labels, size, augment=False, seed=p.seed),
                            batch_size=p.batch_size * 2, **loader_opts)

    criterion = nn.CrossEntropyLoss(weight=class_weights(job.train.labels, len(job.classes)).to(device),
                                    label_smoothing=p.label_smoothing)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=p.weight_decay)
    steps = max(1, p.epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)

    epochs: list[EpochResult] = []
    best_loss, best_epoch, best_state, stale = math.inf, 0, copy.deepcopy(model.state_dict()), 0
    stopped_early = False
    for epoch in range(1, p.epochs + 1):
        sampler.set_epoch(epoch)
        trained.train()
        t0 = time.perf_counter()
        data_s, loss_sum, seen = 0.0, 0.0, 0
        t_wait = time.perf_counter()
        for images, labels in train_loader:
            data_s += time.perf_counter() - t_wait
            if should_stop():
                raise Cancelled()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits, _ = trained(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(labels)
            seen += len(labels)
            t_wait = time.perf_counter()
        train_s = time.perf_counter() - t0
        val_eval = _evaluate(model, val_loader, job.classes, device, should_stop)
        result = EpochResult(
            epoch=epoch,
            train_loss=loss_sum / max(seen, 1),
            val_loss=val_eval.loss,
            val_accuracy=val_eval.accuracy,
            frames_per_s=seen * world / train_s if train_s > 0 else 0.0,
            data_share=data_s / train_s if train_s > 0 else 0.0,
            seconds=time.perf_counter() - t0,
        )
        epochs.append(result)
        if rank == 0:
            on_epoch(result)
        if val_eval.loss < best_loss - 1e-4:
            best_loss, best_epoch, stale = val_eval.loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        elif epoch > p.epochs // 2:  # one-cycle: validation only settles once the rate anneals
            stale += 1
            if stale >= p.patience:
                stopped_early = True
                break
    fit_s = time.perf_counter() - started
    model.load_state_dict(best_state)
    test_loader = DataLoader(FrameDataset(job.test.paths, job.test.labels, size, augment=False, seed=p.seed),
                             batch_size=p.batch_size * 2)
    t_eval = time.perf_counter()
    test_eval = _evaluate(model, test_loader, job.classes, device, should_stop)
    val_eval = _evaluate(model, val_loader, job.classes, device, should_stop)
    model.to("cpu").eval()
    return TrainResult(
        model=model, epochs=epochs, best_epoch=best_epoch, stopped_early=stopped_early, test=test_eval, val=val_eval,
        device=str(device), world_size=world,
        timings={"fit_s": fit_s, "evaluate_s": time.perf_counter() - t_eval, "total_s": time.perf_counter() - started},
    )


@torch.no_grad()
def _evaluate(
    model: InspectionNet, loader: DataLoader, classes: list[str], device: torch.device, should_stop: Callable[[], bool]
) -> Evaluation:
    model.eval()
    preds, trues, loss_sum = [], [], 0.0
    ce = nn.CrossEntropyLoss(reduction="sum")
    for images, labels in loader:
        if should_stop():
            raise Cancelled()
        logits, _ = model(images.to(device))
        labels = labels.to(device)
        loss_sum += float(ce(logits, labels))
        preds.append(logits.argmax(1).cpu())
        trues.append(labels.cpu())
    y_pred, y_true = torch.cat(preds).numpy(), torch.cat(trues).numpy()
    return evaluate(y_true, y_pred, classes, loss=loss_sum / max(len(y_true), 1))
