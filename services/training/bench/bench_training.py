"""Training throughput and time to a candidate on the demo dataset size.

600 synthetic apple frames (lineloop.vision's renderer, 150 per class, 60/20/20
split), 96x96 model input, the service's default parameters; measured for each
DataLoader worker count given. "Time to a candidate" is what the training
service spends between having the frames cached and having a registered-ready
model: fit with early stopping, test evaluation, ONNX export.

    .venv/bin/python services/training/bench/bench_training.py [--frames 600] [--epochs 40] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from lineloop.model.export import export_onnx
from lineloop.training.job import Split, TrainJob, TrainParams
from lineloop.training.trainer import train
from lineloop.vision import CLASSES, AppleRenderer, encode_png


def render(root: Path, frames: int, size: int) -> dict[str, Split]:
    classes = sorted(CLASSES)
    renderer = AppleRenderer(size=size, seed=7)
    per_class = frames // len(classes)
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for ci, label in enumerate(classes):
        for i in range(per_class):
            split = "train" if i < 0.6 * per_class else "val" if i < 0.8 * per_class else "test"
            path = root / f"{label}-{i}.png"
            path.write_bytes(encode_png(renderer.render(ci * 1_000_000 + i, label=label).image))
            splits[split][0].append(path)
            splits[split][1].append(ci)
    return {k: Split(*v) for k, v in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=96, help="rendered frame and model input size")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        splits = render(Path(tmp), args.frames, args.size)
        print(f"rendered {args.frames} frames at {args.size}x{args.size} in {time.perf_counter() - t0:.1f}s "
              f"(train {len(splits['train'].paths)}, val {len(splits['val'].paths)}, test {len(splits['test'].paths)})")
        rows = []
        for workers in args.workers:
            params = TrainParams(epochs=args.epochs, input_size=args.size)
            job = TrainJob(classes=sorted(CLASSES), train=splits["train"], val=splits["val"], test=splits["test"],
                           params=params, num_workers=workers)
            started = time.perf_counter()
            result = train(job)
            onnx = export_onnx(result.model)
            to_candidate = time.perf_counter() - started
            steady = result.epochs[1:] or result.epochs  # epoch 1 includes worker start-up
            rows.append((workers, len(result.epochs), result.best_epoch,
                         sum(e.frames_per_s for e in steady) / len(steady),
                         min(e.frames_per_s for e in result.epochs), max(e.frames_per_s for e in result.epochs),
                         sum(e.data_share for e in steady) / len(steady), result.timings["fit_s"], to_candidate,
                         result.test.accuracy, result.test.ok_false_positive_rate, len(onnx)))
            print("\nworkers", workers, "per epoch:")
            print(f"{'epoch':>5} {'frames/s':>9} {'data share':>10} {'train loss':>10} {'val loss':>9} {'val acc':>8}")
            for e in result.epochs:
                print(f"{e.epoch:>5} {e.frames_per_s:>9.0f} {e.data_share:>10.1%} {e.train_loss:>10.4f} "
                      f"{e.val_loss:>9.4f} {e.val_accuracy:>8.3f}")
    print("\nsummary (frames/s and data share: mean over epochs 2+)")
    print(f"{'workers':>7} {'epochs':>6} {'best':>4} {'frames/s':>9} {'min':>6} {'max':>6} {'data share':>10} "
          f"{'fit s':>6} {'to candidate s':>14} {'test acc':>8} {'ok FPR':>6} {'onnx KiB':>8}")
    for w, n, best, fps, lo, hi, share, fit, cand, acc, fpr, size in rows:
        print(f"{w:>7} {n:>6} {best:>4} {fps:>9.0f} {lo:>6.0f} {hi:>6.0f} {share:>10.1%} {fit:>6.1f} {cand:>14.1f} "
              f"{acc:>8.3f} {fpr:>6.3f} {size / 1024:>8.0f}")


if __name__ == "__main__":
    main()
