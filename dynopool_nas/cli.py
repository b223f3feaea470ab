"""The ``dynopool-nas`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .convert import PLACEMENTS, dynopool_layers, dynopoolify
from .cost import GMACsCost, count_macs
from .data import DATASETS, DigitsDataset
from .models import MODELS, create_model, small_cnn
from .train import EpochResult, fit


def _format_sizes(sizes: dict[str, tuple[int, int]]) -> str:
    return "  ".join(f"{name}={h}x{w}" for name, (h, w) in sizes.items())


def run_demo(
    epochs: int = 15,
    image_size: int = 32,
    gmacs_lambda: float = 2.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[EpochResult]:
    """Convert a small CNN with DynOPool and train it on the bundled digits (CPU, ~1 minute)."""
    torch.manual_seed(seed)
    train_set = DigitsDataset("train", image_size=image_size)
    val_set = DigitsDataset("val", image_size=image_size)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=256)
    input_size = (DigitsDataset.in_chans, image_size, image_size)
    human = small_cnn(num_classes=DigitsDataset.num_classes, in_chans=DigitsDataset.in_chans)
    model = dynopoolify(human)
    cost = GMACsCost.from_model(model, input_size)
    print(f"DynOPool demo: small CNN on scikit-learn digits at {image_size}x{image_size}, "
          f"{len(train_set)} train / {len(val_set)} val images, lambda={gmacs_lambda}")
    print(f"human model: {count_macs(human, input_size).gmacs * 1e3:.3f} MMACs, "
          f"pool sizes {_format_sizes(cost.feature_map_sizes())}")

    def report(result: EpochResult) -> None:
        print(f"epoch {result.epoch:2d}  loss {result.train_loss:.3f}  val top-1 {result.val_accuracy:6.2%}  "
              f"{result.gmacs * 1e3:.3f} MMACs  {_format_sizes(result.sizes)}")

    history = fit(model, train_loader, val_loader, cost, epochs=epochs, gmacs_lambda=gmacs_lambda,
                  progress=progress, on_epoch=report)
    final = count_macs(model, input_size)
    print(f"final: val top-1 {history[-1].val_accuracy:.2%}, {final.gmacs * 1e3:.3f} MMACs (fvcore; DynOPool "
          f"{final.dynopool_share:.1%} of it)")
    for name, layer in dynopool_layers(model):
        r_h, r_w = layer.scale
        print(f"  {name}: scale ({r_h:.3f}, {r_w:.3f}) -> feature map {history[-1].sizes[name]}")
    return history


def _macs(args: argparse.Namespace) -> None:
    human = create_model(args.model, num_classes=args.num_classes)
    input_size = (3, args.image_size, args.image_size)
    converted = dynopoolify(human, placement=args.placement)
    for label, model in (("human", human), ("DynOPool", converted)):
        report = count_macs(model, input_size)
        print(f"{args.model} {label:8s} {report.gmacs:8.4f} GMACs  DynOPool share {report.dynopool_share:.4%}")
    print("feature maps:", _format_sizes(GMACsCost.from_model(converted, input_size).feature_map_sizes()))


def _search(args: argparse.Namespace) -> None:
    from strategies.search import run_search  # NNI is imported only for the commands that use it

    arch, _ = run_search(
        args.space, args.strategy, args.dataset, args.epochs, args.output, data_dir=args.data_dir,
        download=args.download, image_size=args.image_size, batch_size=args.batch_size, learning_rate=args.lr,
        alpha_learning_rate=args.alpha_lr, gmacs_lambda=args.gmacs_lambda, gmacs_budget=args.gmacs_budget,
        max_train_images=args.max_train_images, seed=args.seed, placement=args.placement,
    )
    metrics = arch["metrics"]
    print(f"search: {args.space} / {args.strategy} on {args.dataset}, {args.epochs} epochs")
    print(f"validation top-1 {metrics['default']:.2%} (supernet), derived architecture {metrics['gmacs'] * 1e3:.3f} "
          f"MMACs, {metrics['params']:,} parameters")
    print("feature maps:", _format_sizes({name: tuple(size) for name, size in arch["sizes"].items()}))
    print(f"architecture: {Path(args.output) / 'arch.json'}   weights: {Path(args.output) / 'weights.pt'}")


def _quick(args: argparse.Namespace) -> None:
    from strategies.quick import run_quick

    run_quick(args.output, port=args.port, max_trials=args.max_trials, epochs=args.epochs, keep=args.keep)


def _export(args: argparse.Namespace) -> None:
    from strategies.standalone import run_export

    table = run_export(args.source, args.output, front=args.front)
    print(table.to_string(index=False))
    print(f"exported {len(table)} model(s) to {args.output} (model.pt: TorchScript, model.onnx, weights.pt, arch.json)")


def _compare(args: argparse.Namespace) -> None:
    from strategies.compare import run_compare

    table = run_compare(args.architectures, args.output, dataset=args.dataset, epochs=args.epochs,
                        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, data_dir=args.data_dir,
                        max_train_images=args.max_train_images, seed=args.seed)
    print(table.to_string(index=False))
    print(f"table: {args.output / 'comparison.csv'}, {args.output / 'comparison.md'}; plot: "
          f"{args.output / 'comparison.png'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynopool-nas", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a DynOPool CNN on the bundled digits and report")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--image-size", type=int, default=32)
    demo.add_argument("--gmacs-lambda", type=float, default=2.0, help="lambda of eq. 4.8 (loss per GMAC)")
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    search = commands.add_parser("search", help="one-shot NNI search (DARTS / GumbelDARTS) with DynOPool")
    search.add_argument("--space", default="cells", help="cells, efficientnet, or a model name such as vgg16_cifar")
    search.add_argument("--strategy", default="darts", choices=("darts", "gumbel-darts"))
    search.add_argument("--dataset", default="digits", choices=DATASETS)
    search.add_argument("--data-dir", help="folder of a real data set (cifar100, aircraft, imagefolder)")
    search.add_argument("--download", action="store_true", help="download the data set into --data-dir")
    search.add_argument("--epochs", type=int, default=5)
    search.add_argument("--output", type=Path, default=Path("runs/search"))
    search.add_argument("--image-size", type=int, default=32)
    search.add_argument("--batch-size", type=int, default=64)
    search.add_argument("--lr", type=float, default=0.01, help="learning rate of the weights (Adam)")
    search.add_argument("--alpha-lr", type=float, default=0.01, help="learning rate of the DynOPool scales")
    constraint = search.add_mutually_exclusive_group()
    constraint.add_argument("--gmacs-lambda", type=float, help="lambda of eq. 4.8 (loss per GMAC)")
    constraint.add_argument("--gmacs-budget", type=float, help="target GMACs per image")
    search.add_argument("--max-train-images", type=int, help="use only the first N training images")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--placement", default="after", choices=PLACEMENTS,
                        help="converted models (--space MODEL): DynOPool after a strided conv (eq. 5.2) or before it")
    quick = commands.add_parser("quick", help="the quick-start nnictl experiment (experiments/quick.yml)")
    quick.add_argument("--output", type=Path, default=Path("runs/quick"))
    quick.add_argument("--port", type=int, help="web UI port (default: a free one)")
    quick.add_argument("--max-trials", type=int, help="override maxTrialNumber")
    quick.add_argument("--epochs", type=int, help="override the trial's epochs")
    quick.add_argument("--keep", action="store_true", help="leave the experiment running for its web UI")
    export = commands.add_parser("export", help="standalone TorchScript/ONNX models of discovered architectures")
    export.add_argument("source", type=Path, help="a search output, a trial folder or an nnictl experiment folder")
    export.add_argument("--output", type=Path, default=Path("runs/export"))
    export.add_argument("--front", action="store_true", help="export the accuracy/GMACs Pareto front, not the best")
    compare = commands.add_parser("compare", help="discovered architectures vs EfficientNet-B0/B1, one recipe")
    compare.add_argument("architectures", nargs="*", type=Path, help="arch.json files or folders holding one")
    compare.add_argument("--output", type=Path, default=Path("runs/compare"))
    compare.add_argument("--dataset", default="digits", choices=DATASETS)
    compare.add_argument("--data-dir")
    compare.add_argument("--epochs", type=int, default=5)
    compare.add_argument("--image-size", type=int, default=32)
    compare.add_argument("--batch-size", type=int, default=64)
    compare.add_argument("--lr", type=float, default=0.05)
    compare.add_argument("--max-train-images", type=int)
    compare.add_argument("--seed", type=int, default=0)
    macs = commands.add_parser("macs", help="MACs of a human model and its DynOPool version (fvcore)")
    macs.add_argument("model", choices=sorted(MODELS))
    macs.add_argument("--image-size", type=int, default=224)
    macs.add_argument("--num-classes", type=int, default=1000)
    macs.add_argument("--placement", default="after", choices=PLACEMENTS,
                      help="DynOPool after a strided conv's activation (eq. 5.2) or before the conv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for noisy in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    start = time.perf_counter()
    if args.command == "demo":
        run_demo(args.epochs, args.image_size, args.gmacs_lambda, args.batch_size, args.seed, not args.no_progress)
    elif args.command == "macs":
        _macs(args)
    elif args.command == "search":
        _search(args)
    elif args.command == "quick":
        _quick(args)
    elif args.command == "export":
        _export(args)
    elif args.command == "compare":
        _compare(args)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
