"""The ``dynopool-nas`` command line: ``demo`` and ``macs`` of :mod:`dynopool_nas.cli`, and the
NNI commands ``search``, ``quick``, ``export`` and ``compare`` of this package.

Building the parser imports neither torch nor NNI (nor :mod:`strategies`): each command imports
its module when it runs, so ``dynopool-nas --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynopool_nas import cli
from dynopool_nas.cli import DATASETS, PLACEMENTS, Names, add_command, format_sizes, output_folder, positive_int

__all__ = ["build_parser", "main"]

SPACES = Names("search_spaces.registry", "SPACES")


def _search(args: argparse.Namespace) -> None:
    from .search import run_search

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
    print("feature maps:", format_sizes({name: tuple(size) for name, size in arch["sizes"].items()}))
    print(f"architecture: {args.output / 'arch.json'}   weights: {args.output / 'weights.pt'}")


def _quick(args: argparse.Namespace) -> None:
    from .quick import QUICK_CONFIG, run_quick

    run_quick(args.output, port=args.port, max_trials=args.max_trials, epochs=args.epochs, keep=args.keep,
              config=args.config or QUICK_CONFIG, progress=not args.no_progress)


def _export(args: argparse.Namespace) -> None:
    from .export import run_export

    table = run_export(args.source, args.output, front=args.front)
    print(table.to_string(index=False))
    print(f"exported {len(table)} model(s) to {args.output} (model.pt: TorchScript, model.onnx, weights.pt, arch.json)")


def _compare(args: argparse.Namespace) -> None:
    from .compare import run_compare

    table = run_compare(args.architectures, args.output, dataset=args.dataset, epochs=args.epochs,
                        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, data_dir=args.data_dir,
                        max_train_images=args.max_train_images, seeds=args.seeds)
    print(table.to_string(index=False))
    print(f"table: {args.output / 'comparison.csv'}, {args.output / 'comparison.md'}; plot: "
          f"{args.output / 'comparison.png'}")


def add_commands(commands: Any) -> None:
    """Add ``search``, ``quick``, ``export`` and ``compare`` to the sub-parsers action ``commands``."""
    search = add_command(commands, "search", _search, "one-shot NNI search (DARTS / GumbelDARTS) with DynOPool")
    search.description += "; --space MODEL converts a model that macs lists"
    # No help text: argparse would list the spaces, and that imports NNI (MODEL: see macs --help).
    search.add_argument("--space", default="cells", choices=SPACES, metavar="{cells,efficientnet,MODEL}")
    search.add_argument("--strategy", default="darts", choices=("darts", "gumbel-darts"))
    search.add_argument("--dataset", default="digits", choices=DATASETS, metavar="DATASET", help="%(choices)s")
    search.add_argument("--data-dir", help="folder of a real data set (cifar100, aircraft, imagefolder)")
    search.add_argument("--download", action="store_true", help="download the data set into --data-dir")
    search.add_argument("--epochs", type=positive_int, default=5)
    search.add_argument("--output", type=output_folder, default="runs/search")
    search.add_argument("--image-size", type=positive_int, default=32)
    search.add_argument("--batch-size", type=positive_int, default=64)
    search.add_argument("--lr", type=float, default=0.01, help="learning rate of the weights (Adam)")
    search.add_argument("--alpha-lr", type=float, default=0.01, help="learning rate of the DynOPool scales")
    constraint = search.add_mutually_exclusive_group()
    constraint.add_argument("--gmacs-lambda", type=float,
                            help="lambda of eq. 4.8, relative to the initial GMACs (loss the initial cost is worth)")
    constraint.add_argument("--gmacs-budget", type=float, help="target GMACs per image")
    search.add_argument("--max-train-images", type=positive_int, help="use only the first N training images")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--placement", default="after", choices=PLACEMENTS, metavar="PLACEMENT",
                        help="converted models (--space MODEL): DynOPool after a strided conv (eq. 5.2) or before "
                             "it: %(choices)s")
    quick = add_command(commands, "quick", _quick, "the quick-start nnictl experiment (experiments/quick.yml)")
    quick.add_argument("--output", type=output_folder, default="runs/quick")
    quick.add_argument("--config", type=Path, help="a quick-style nnictl config (default: experiments/quick.yml)")
    quick.add_argument("--port", type=int, help="web UI port (default: a free one)")
    quick.add_argument("--max-trials", type=positive_int, help="override maxTrialNumber")
    quick.add_argument("--epochs", type=positive_int, help="override the trial's epochs")
    quick.add_argument("--keep", action="store_true", help="leave the experiment running for its web UI")
    quick.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    export = add_command(commands, "export", _export, "standalone TorchScript/ONNX models of discovered architectures")
    export.add_argument("source", type=Path, help="a search output, a trial folder or an nnictl experiment folder")
    export.add_argument("--output", type=output_folder, default="runs/export")
    export.add_argument("--front", action="store_true", help="export the accuracy/GMACs Pareto front, not the best")
    compare = add_command(commands, "compare", _compare, "discovered architectures vs EfficientNet-B0/B1, one recipe")
    compare.add_argument("architectures", nargs="*", type=Path, help="arch.json files or folders holding one")
    compare.add_argument("--output", type=output_folder, default="runs/compare")
    compare.add_argument("--dataset", default="digits", choices=DATASETS, metavar="DATASET", help="%(choices)s")
    compare.add_argument("--data-dir")
    compare.add_argument("--epochs", type=positive_int, default=5)
    compare.add_argument("--image-size", type=positive_int, default=32)
    compare.add_argument("--batch-size", type=positive_int, default=64)
    compare.add_argument("--lr", type=float, default=0.05)
    compare.add_argument("--max-train-images", type=positive_int)
    compare.add_argument("--seeds", type=int, nargs="+", default=[0], help="train every model once per seed")

def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``dynopool-nas`` command."""
    return cli.build_parser(add_commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``dynopool-nas`` command; return its exit status (0, 1 on failure, 2 for a bad argument)."""
    return cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
