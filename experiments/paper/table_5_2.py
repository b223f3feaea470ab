"""Thesis Table 5.2 and Figure 5.3 analogue on real data (Fashion-MNIST, 32x32 padded): the human
model vs DynOPool vs Shape Adaptor (Liu et al., ECCV 2020) as its authors run it, and the aggregation
range of one output bin of each learned resizer.

Rows (every one on the same training subset, validation split for the curves, full test set for
the final numbers, the same seeds):

* human: the backbone as designed;
* DynOPool: ``dynopoolify`` at the library's defaults, lambda ``--gmacs-lambda`` (default 0);
* Shape Adaptor (authors): ``shape_adaptify(placement="authors")``, their code's standard mode
  (lorenmt/shape-adaptor, model_list.py): the human pooling removed, int(log2(32/2)) adaptors
  uniformly over the convolution blocks, SA_init (last map 8 wide before truncation),
  align_corners=True, sizes int(running_dim * s); alphas by plain SGD at their rate (lr 0.1 once
  every 20 iterations, so --authors-alpha-lr 0.005 per iteration), no GMACs term;
* Shape Adaptor (project): this project's ``shape_adaptify(model)`` at the human pooling places
  (initial ratio 0.55, align_corners=False, rounded sizes, the library's alpha step), labelled.

DynOPool and both Shape Adaptor rows train 25% longer than the human model, as the thesis trains
DynOPool. DynOPool is compared with every other row, and each Shape Adaptor with the human model,
paired by seed (test top-1 difference, 95% t-interval).

    python experiments/paper/table_5_2.py
    python experiments/paper/table_5_2.py --backbone vgg16_cifar --width 0.125
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import pandas as pd
import torch
from _report import (
    RECIPE,
    RESULTS,
    dynopool_epochs,
    experiment_arguments,
    page_name,
    paired,
    plot_scales,
    resizers,
    summarize,
    train_and_test,
    training_subset,
    verdict,
    write_report,
)
from torch import nn

from dynopool_nas import DynOPool2d, ShapeAdaptor2d, create_model, dynopoolify, shape_adaptify
from dynopool_nas.viz import aggregation_range, plot_aggregation_range

SIZE = 32
HUMAN, AUTHORS, PROJECT = "human", "Shape Adaptor (authors)", "Shape Adaptor (project, human places)"

# this project's ShapeAdaptor2d as shape_adaptify(model) uses it vs the authors' code
COMPARISON = [
    "| | project (`shape_adaptify(model)`) | authors (`placement=\"authors\"`, here) | lorenmt/shape-adaptor |",
    "|---|---|---|---|",
    "| places | the human resizers (wherever `dynopoolify` puts a DynOPool) | uniformly over the convolution "
    "blocks, `places[int(i * len(places) / n)]`, never after the last block | the same (`sampling_index`) |",
    "| human pooling | replaced by the adaptor | removed (`nn.Identity`) | not built |",
    "| number | one per human resizer | `n = int(log2(input / 2))` (4 at 32x32), capped at the number of places | "
    "`int(log2(input / 2))`; where there are fewer places, repeated places apply once but `SA_init` counts all |",
    "| initial ratio | 0.55 | `SA_init`: `input * s^n = 8`, eps 1e-4 | the same |",
    "| mixing | `s max_pool2d(x) + (1 - s) x`, both resized, `s = sigmoid(alpha)` | the same | "
    "`(1 - s) max_pool2d(x) + s x`: alpha has the opposite sign, same ratio and output |",
    "| resizing | bilinear, `align_corners=False` | bilinear, `align_corners=True` | the same as authors |",
    "| output size | `round(H_in * r)` per axis | `int(H_in * r)` per axis, at least 1 | `int(running_dim * r)`, "
    "square (equal here: 3x3 convolutions with padding 1, square input) |",
    "| alpha optimizer | the model's SGD, alpha group at lr/10 with normalized steps, cosine | the model's SGD, "
    "alpha group at 0.005 with plain gradient steps, cosine | own SGD (lr 0.1, Nesterov 0.9, cosine), one step "
    "every 20 iterations on its own forward pass |",
    "| penalty | none | none | memory limit (`--limit_dim`), off by default |",
    "| weights | the shared recipe, PyTorch's default initialization | the same | SGD lr 0.1 (wd 5e-4), "
    "Xavier initialization, 200 epochs, random crop and flip |",
]


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="small_cnn", choices=("small_cnn", "vgg16_cifar"),
                        help="a VGG-style model (the authors' placement needs one)")
    parser.add_argument("--width", type=float, default=None, help="vgg16_cifar's channel multiplier")
    parser.add_argument("--gmacs-lambda", type=float, default=0.0, help="DynOPool's lambda (relative to the "
                        "initial GMACs; default 0, as Shape Adaptor has no GMACs term)")
    parser.add_argument("--authors-alpha-lr", type=float, default=0.1 / 20,
                        help="the authors' row's alpha learning rate per iteration (their 0.1 every 20 iterations)")


def _variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    long = dynopool_epochs(args.epochs)
    return {
        HUMAN: {},
        f"DynOPool (lambda {args.gmacs_lambda:g})": {"convert": dynopoolify, "lam": args.gmacs_lambda, "epochs": long},
        AUTHORS: {"convert": lambda model: shape_adaptify(model, placement="authors", input_size=SIZE),
                  "epochs": long, "alpha_lr": args.authors_alpha_lr, "scale_step": "plain"},
        PROJECT: {"convert": shape_adaptify, "epochs": long},
    }


def _initial_places(args: argparse.Namespace, kwargs: dict[str, Any] | None) -> dict[str, str]:
    """Each Shape Adaptor row's adaptors before training: module path and output size."""
    places = {}
    for label in (AUTHORS, PROJECT):
        human = create_model(args.backbone, num_classes=10, in_chans=1, **(kwargs or {}))
        model = _variants(args)[label]["convert"](human)
        model(torch.zeros(1, 1, SIZE, SIZE))
        places[label] = ", ".join(f"{name} {m.output_size[0]}x{m.output_size[1]}" for name, m in resizers(model))
    return places


def _first(model: nn.Module, kind: type) -> nn.Module:
    return next(module for _, module in resizers(model) if isinstance(module, kind))


def _figure(trained: dict[str, nn.Module], dynopool: str, path: Any) -> None:
    """Figure 5.3: each input pixel's contribution to output bin (2, 2) of each model's first
    resizer on a 16x16 input, with mean aggregation so that every query point shows."""
    pool = _first(trained[dynopool], DynOPool2d)
    mean_pool = DynOPool2d(pool.scale, aggregation="mean")
    layers: dict[str, nn.Module] = {f"DynOPool r=({pool.scale[0]:.2f}, {pool.scale[1]:.2f})": mean_pool}
    for label, short in ((AUTHORS, "authors'"), (PROJECT, "project's")):
        adaptor = copy.deepcopy(_first(trained[label], ShapeAdaptor2d))
        adaptor.aggregation = "mean"
        layers[f"Shape Adaptor, {short} r={adaptor.ratio:.2f}"] = adaptor
    ranges = {label: aggregation_range(layer, (16, 16), (2, 2)) for label, layer in layers.items()}
    plot_aggregation_range(ranges, path, {label: layer.output_size for label, layer in layers.items()})


def main() -> None:
    args = experiment_arguments(__doc__, [0, 1, 2], extra=_options)
    started = time.perf_counter()
    variants = _variants(args)
    kwargs = {"width": args.width} if args.width else None
    places = _initial_places(args, kwargs)
    runs, trained = [], {}
    for seed in args.seeds:
        for label, options in variants.items():
            run = train_and_test(label, args=args, seed=seed, backbone=args.backbone, model_kwargs=kwargs, **options)
            runs.append(run)
            trained.setdefault(label, run.model)
    table = pd.DataFrame([run.row for run in runs])
    curves = pd.DataFrame([point for run in runs for point in run.curve])
    backbone = args.backbone + (f" (width x{args.width:g})" if args.width else "")
    suffix = "" if args.backbone == "small_cnn" else f"_{args.backbone}"
    name = page_name(f"table_5_2{suffix}", args.dataset)
    figure = f"{page_name(f'figure_5_3{suffix}', args.dataset)}.png"
    curves.to_csv(RESULTS / f"{name}_curves.csv", index=False)
    plot_scales(curves, RESULTS / f"{name}_scales.png", f"{backbone}: scales per epoch")
    dynopool = next(label for label in variants if label.startswith("DynOPool"))
    _figure(trained, dynopool, RESULTS / figure)

    summary = summarize(table)
    human_gmacs = summary.set_index("model").loc[HUMAN, "gmacs"]
    summary.insert(summary.columns.get_loc("gmacs") + 1, "gmacs_vs_human", summary["gmacs"] / human_gmacs)
    summary["maps (first seed)"] = [table.loc[table["model"] == m, "maps"].iloc[0] for m in summary["model"]]
    print(summary.to_string(index=False))
    comparisons = [paired(table, dynopool, other) for other in (AUTHORS, PROJECT, HUMAN)]
    comparisons += [paired(table, other, HUMAN) for other in (AUTHORS, PROJECT)]
    for row in comparisons:
        row["verdict"] = verdict(row)
    human_curve = curves[curves["model"] == HUMAN].groupby("epoch")["val_top1"].mean()
    training = training_subset(args)
    long = dynopool_epochs(args.epochs)
    body = "\n".join([
        f"{backbone} on {args.dataset} padded to {SIZE}x{SIZE}: {training} the seeded training split, validation on "
        "the held-out training images (curves), test on the test split (final numbers only). "
        f"{RECIPE}. The human model trains {args.epochs} epochs; DynOPool and both Shape Adaptor rows {long} "
        "(25% longer, as the thesis trains DynOPool). "
        f"DynOPool: `dynopoolify` at the library's defaults, lambda {args.gmacs_lambda:g}. "
        f"{AUTHORS}: `shape_adaptify(model, placement=\"authors\", input_size={SIZE})`, alphas by plain SGD steps "
        f"at {args.authors_alpha_lr:g} per iteration (the authors' 0.1 once every 20 iterations) on the same cosine "
        f"schedule, no GMACs term. {PROJECT}: `shape_adaptify(model)`, alphas at the library's defaults, no GMACs "
        "term. GMACs are fvcore's count of the trained model.", "",
        summary.to_markdown(index=False, floatfmt=".4g"), "",
        "Paired by seed (test top-1 difference, 95% t-interval over seeds):", "",
        pd.DataFrame(comparisons).to_markdown(index=False, floatfmt=".4f"), "",
        "The thesis (Table 5.2, CIFAR-100, against the Shape Adaptor paper's numbers): DynOPool higher accuracy "
        "and fewer GMACs for every backbone.", "",
        "Human model's mean validation top-1 per epoch (has it plateaued?): "
        + ", ".join(f"{value:.4f}" for value in human_curve.tolist()), "",
        f"Every epoch of every run, with every resizer's scale (a Shape Adaptor's ratio on both axes), is in "
        f"`{name}_curves.csv`; the scales per epoch are drawn in `{name}_scales.png`.", "",
        f"Figure 5.3 (`{figure}`): each input pixel's contribution to output bin (2, 2) of the first learned "
        "resizer of each model's first seed, on a 16x16 input, drawn with mean aggregation so that every query "
        "point shows (the trained models use max).", "",
        "## Project ShapeAdaptor2d vs the authors'", "",
        "The authors' code (repository lorenmt/shape-adaptor, `model_list.py` and `model_training.py`, standard "
        "`shape-adaptor` mode) against this project's two ways of using `ShapeAdaptor2d` "
        "(`dynopool_nas/shape_adaptor.py`):", "",
        *COMPARISON, "",
        f"Initial places and maps on {backbone} (module path: output size of a {SIZE}x{SIZE} input):", "",
        *(f"* {label}: {text}" for label, text in places.items()), "",
        *(["On the small CNN both placements sit after the first three convolution blocks (the authors' 4 "
           "adaptors capped at its 3 places): the rows differ in initialization, resizing, size rule and alpha "
           "step, not in place.", ""] if args.backbone == "small_cnn" else []),
        "## Every run", "", table.to_markdown(index=False, floatfmt=".4g"),
    ])
    write_report(name, f"Table 5.2 and Figure 5.3 on {args.dataset}, {backbone}: DynOPool vs Shape Adaptor vs human",
                 body, started, args.seeds)


if __name__ == "__main__":
    main()
