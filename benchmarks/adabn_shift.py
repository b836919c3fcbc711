"""AdaBN under intensity shifts: a BatchNorm CNN trained on MNIST, evaluated on shifted test sets before and after
re-estimating its BN statistics on unlabeled shifted training images (normact.surgery.adapt), plus alpha-BN at a
small test batch size.

Model: the bench's ``cnn`` (three 3x3 conv -> normact BatchNorm2d -> ReLU stages, max pooling, global average
pool, linear head; ``--width`` channels in the first stage), Adam (lr 2e-3), batch 64, ``--steps`` steps, one
run per seed. Data: ``normact.bench.tasks.load_task("mnist")`` (``digits`` when MNIST is not installed), whose
images are standardized; a shift acts on the raw intensity r in [0, 1], recovered from the standardized x as
r = (x - lo) / (hi - lo) with lo, hi the training set's min and max (raw 0 and 1):

- ``invert``: r -> 1 - r (on the standardized scale x -> lo + hi - x, i.e. -x up to an offset);
- ``contrast``: r -> 0.5 r + 0.25; ``bright``: r -> 0.5 r + 0.5; ``dim``: r -> 0.3 r;
- ``noise``: r -> r + N(0, 0.3^2) per pixel (fixed noise per image).

Table 1, accuracy on the first ``--test-size`` test images (mean +- std over seeds): the source model ("before"),
after ``recalibrate_batchnorm`` on ``--adapt-batches`` batches of 128 shifted training images ("AdaBN"), and the
clean accuracy of the same source model for reference. Table 2: alpha-BN (``calibrate_batchnorm``) evaluated at
test batch size ``--alpha-batch`` for several alpha (1 = the source model, 0 = test-batch statistics alone).

    python benchmarks/adabn_shift.py                       # 3 seeds x 600 steps, about 1-2 minutes on 2 cores
    python benchmarks/adabn_shift.py --seeds 1 --steps 300 --test-size 2000
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact.bench.models import build_model
from normact.bench.tasks import DataUnavailableError, ImageData, load_task
from normact.surgery.adapt import calibrate_batchnorm, recalibrate_batchnorm

ALPHAS = (1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.0)


def _shifts(noise_seed: int) -> dict[str, Callable[[Tensor], Tensor]]:
    def noise(r: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(noise_seed)
        return r + 0.3 * torch.randn(r.shape, generator=g)

    return {
        "clean": lambda r: r,
        "invert": lambda r: 1.0 - r,
        "contrast": lambda r: 0.5 * r + 0.25,
        "bright": lambda r: 0.5 * r + 0.5,
        "dim": lambda r: 0.3 * r,
        "noise": noise,
    }


def _on_raw(f: Callable[[Tensor], Tensor], lo: float, hi: float) -> Callable[[Tensor], Tensor]:
    return lambda x: lo + (hi - lo) * f((x - lo) / (hi - lo))


def _train(data: ImageData, seed: int, steps: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn", norm="batchnorm", act="relu", in_shape=data.shape, num_classes=10, width=width)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.x_train), (64,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--task", default="mnist", help="mnist (falls back to digits when not installed) or digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--test-size", type=int, default=5000)
    ap.add_argument("--adapt-batches", type=int, default=20, help="unlabeled shifted batches of 128 for AdaBN")
    ap.add_argument("--alpha-batch", type=int, default=8, help="test batch size of the alpha-BN table")
    ap.add_argument("--alpha-test-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_task(args.task)
    except DataUnavailableError as e:
        print(f"{args.task} unavailable ({e}); using digits")
        data = load_task("digits")
    lo, hi = float(data.x_train.min()), float(data.x_train.max())
    xt, yt = data.x_test[: args.test_size], data.y_test[: args.test_size]
    shifts = {k: _on_raw(f, lo, hi) for k, f in _shifts(noise_seed=123).items()}
    train_shifts = {k: _on_raw(f, lo, hi) for k, f in _shifts(noise_seed=456).items()}
    before: dict[str, list[float]] = {k: [] for k in shifts}
    after: dict[str, list[float]] = {k: [] for k in shifts}
    alpha_acc: dict[str, dict[float, list[float]]] = {k: {a: [] for a in ALPHAS} for k in shifts}
    start = time.perf_counter()
    for seed in range(args.seeds):
        model = _train(data, seed, args.steps, args.width)
        for name, shift in shifts.items():
            xs = shift(xt)
            before[name].append(_accuracy(model, xs, yt))
            adapted = copy.deepcopy(model)
            g = torch.Generator().manual_seed(1000 + seed)
            unlabeled = [
                train_shifts[name](data.x_train[torch.randint(0, len(data.x_train), (128,), generator=g)])
                for _ in range(args.adapt_batches)
            ]
            recalibrate_batchnorm(adapted, unlabeled)
            after[name].append(_accuracy(adapted, xs, yt))
            xa, ya = xs[: args.alpha_test_size], yt[: args.alpha_test_size]
            for alpha in ALPHAS:
                calibrated = copy.deepcopy(model)
                calibrate_batchnorm(calibrated, alpha)
                alpha_acc[name][alpha].append(_accuracy(calibrated, xa, ya, batch=args.alpha_batch))
    elapsed = time.perf_counter() - start

    print(
        f"\nAdaBN on {data.name}: cnn width {args.width}, {args.steps} steps, {args.seeds} seed(s), "
        f"{len(xt)} test images, AdaBN on {args.adapt_batches} x 128 unlabeled shifted training images"
    )
    print(f"{'shift':10s} {'before':>16s} {'AdaBN':>16s} {'gain':>8s}")
    for name in shifts:
        gain = statistics.fmean(after[name]) - statistics.fmean(before[name])
        print(f"{name:10s} {_fmt(before[name]):>16s} {_fmt(after[name]):>16s} {gain:+8.3f}")
    print(
        "\nAdaBN re-fits a per-channel affine map with positive scale: it undoes intensity rescaling and offsets "
        "(contrast, bright, dim) but not an inversion, which negates the first layer's features."
    )
    print(
        f"\nalpha-BN at test batch size {args.alpha_batch} ({min(args.alpha_test_size, len(xt))} test images; "
        "alpha = weight of the source statistics)"
    )
    print(f"{'shift':10s} " + " ".join(f"{f'a={a:g}':>7s}" for a in ALPHAS))
    for name in shifts:
        print(f"{name:10s} " + " ".join(f"{statistics.fmean(alpha_acc[name][a]):7.3f}" for a in ALPHAS))
    print(f"\n({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
