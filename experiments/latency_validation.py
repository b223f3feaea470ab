"""Checks of the measured latency model (dynopool_nas.latency) on this machine.

``--held-out``: the choice of the per-layer fit. Every layer of a few converted models is timed
on a 5 x 5 grid of scale factors of its initial height and width; both fits are made on the
3 x 3 sub-grid of the even-indexed scales and judged on the 16 points between them: the affine
``a + b * x`` (non-negative least squares, the model's fit) and bilinear interpolation of log
latency on the log grid. Prints the median and 90th percentile of the relative errors per fit,
and how many layers the interpolant makes non-monotone (a bigger map predicted faster).

Default: predicted (LatencyCost) against measured (measure_model) end-to-end latency of converted
models at random DynOPool scales, with GMACs beside them; Spearman correlations and the median
absolute error.

    python experiments/latency_validation.py --held-out            # about 2 minutes on 1 thread
    python experiments/latency_validation.py --draws 8             # a few minutes on 1 thread

The machine is shared: rerun before trusting a number; every timing is a median of interleaved
repeats of short samples, which drops preempted samples but not a load that lasts the whole run.
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator
from scipy.stats import spearmanr

from dynopool_nas import GMACsCost, LatencyCost, LatencyTable, create_model, dynopool_layers, dynopoolify, measure_model
from dynopool_nas.latency import fit_affine

MODELS = {  # name -> (builder, input size)
    "resnet_cifar": (lambda: dynopoolify(create_model("resnet_cifar", 10)), (3, 32, 32)),
    "mobilenetv2_cifar": (lambda: dynopoolify(create_model("mobilenetv2_cifar", 10, width=0.5)), (3, 32, 32)),
    "vgg16_cifar": (lambda: dynopoolify(create_model("vgg16_cifar", 10, width=0.25)), (3, 32, 32)),
}
GRID = (0.35, 0.5, 0.71, 1.0, 1.41)


def held_out(table: LatencyTable) -> None:
    errors: dict[str, list[float]] = {"affine": [], "bilinear": []}
    nonmonotone = layers = 0
    for name, (build, input_size) in MODELS.items():
        cost = LatencyCost.from_model(build(), input_size, table, scales=GRID)
        for term in cost.terms:
            hs = sorted({h for h, *_ in term.samples})
            ws = sorted({w for _, w, *_ in term.samples})
            if len(hs) != len(GRID) or len(ws) != len(GRID):
                continue  # a constant layer, or a map so small that grid sizes coincide
            by_size = {(h, w): (x, ms) for h, w, x, ms in term.samples}
            train_h, train_w = hs[::2], ws[::2]
            train = [(h, w) for h in train_h for w in train_w]
            test = [s for s in by_size if s not in train]
            a, b = fit_affine([by_size[s][0] for s in train], [by_size[s][1] for s in train])
            values = np.log([[by_size[h, w][1] for w in train_w] for h in train_h])
            interpolate = RegularGridInterpolator((np.log(train_h), np.log(train_w)), values)
            layers += 1
            predicted = {s: float(np.exp(interpolate((math.log(s[0]), math.log(s[1]))))) for s in test}
            if any(predicted[s] > predicted[t] for s in test for t in test
                   if s[0] <= t[0] and s[1] <= t[1] and s != t and by_size[s][0] <= by_size[t][0]):
                nonmonotone += 1
            for size in test:
                x, measured = by_size[size]
                errors["affine"].append(abs(a + b * x - measured) / measured)
                errors["bilinear"].append(abs(predicted[size] - measured) / measured)
        print(f"{name}: {len(cost.terms)} layer calls")
    print(f"{layers} layers on the full grid, {len(errors['affine'])} held-out points")
    for fit, values in errors.items():
        print(f"  {fit:8s} relative error: median {statistics.median(values):.3f}, "
              f"90th percentile {float(np.quantile(values, 0.9)):.3f}")
    print(f"  bilinear interpolant non-monotone (a bigger map predicted faster) in {nonmonotone} of {layers} layers")


def end_to_end(table: LatencyTable, draws: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for name, (build, input_size) in MODELS.items():
        model = build()
        cost = LatencyCost.from_model(model, input_size, table)
        gmacs = GMACsCost.from_model(model, input_size)
        for _ in range(draws):
            with torch.no_grad():
                for _, layer in dynopool_layers(model):
                    layer.alpha.copy_((0.35 + 0.6 * torch.rand(2, generator=generator)).reciprocal())
            predicted, measured = float(cost().detach()), measure_model(model, input_size, threads=table.threads)
            rows.append((name, predicted, measured, float(gmacs().detach())))
            print(f"{name}: predicted {predicted:.3f} ms, measured {measured:.3f} ms, {rows[-1][3]:.4f} GMACs")
    predicted, measured, gmacs = (np.array([row[i] for row in rows]) for i in (1, 2, 3))
    print(f"Spearman predicted/measured {spearmanr(predicted, measured)[0]:.3f}, "
          f"GMACs/measured {spearmanr(gmacs, measured)[0]:.3f}; "
          f"median absolute error {float(np.median(np.abs(predicted - measured) / measured)):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", action="store_true", help="compare the affine fit with bilinear interpolation")
    parser.add_argument("--draws", type=int, default=4, help="random scale settings per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = LatencyTable(threads=args.threads)
    print(f"device {table.fingerprint}; cache {table.path} ({len(table)} points)")
    held_out(table) if args.held_out else end_to_end(table, args.draws, args.seed)


if __name__ == "__main__":
    main()
