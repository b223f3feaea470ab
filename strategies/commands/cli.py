"""The ``dynopool-nas`` command line: ``demo`` and ``macs`` of :mod:`dynopool_nas.cli`, and the
NNI commands ``search``, ``quick``, ``export`` and ``compare`` of this package.

Building the parser imports neither torch nor NNI (nor :mod:`strategies`): each command imports
its module when it runs, so ``dynopool-nas --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from dynopool_nas import cli
from dynopool_nas.cli import DATASETS, PLACEMENTS, Names, add_command, format_sizes, output_folder, positive_int

from .settings import STRATEGY_NAMES, CompareSettings, SearchSettings

__all__ = ["build_parser", "main"]

SPACES = Names("search_spaces.registry", "SPACES")
ANCHORS = Names("strategies.constraint", "ANCHORS")
Settings = TypeVar("Settings", SearchSettings, CompareSettings)


def _settings(kind: type[Settings], args: argparse.Namespace) -> Settings:
    """``kind`` built from the parsed flags, one per field (a field no flag sets keeps its default)."""
    return kind(**{field.name: getattr(args, field.name) for field in fields(kind) if hasattr(args, field.name)})


def _search(args: argparse.Namespace) -> None:
    from .search import run_search

    settings = _settings(SearchSettings, args)
    arch, _ = run_search(settings)
    metrics = arch["metrics"]
    print(f"search: {settings.space} / {settings.strategy} on {settings.dataset}, {settings.epochs} epochs")
    latency = f", {metrics['latency_ms']:.3g} ms predicted" if "latency_ms" in metrics else ""
    print(f"validation top-1 {metrics['default']:.2%} (supernet), derived architecture {metrics['gmacs'] * 1e3:.3f} "
          f"MMACs, {metrics['params']:,} parameters{latency}")
    print("feature maps:", format_sizes({name: tuple(size) for name, size in arch["sizes"].items()}))
    print(f"architecture: {settings.output / 'arch.json'}   weights: {settings.output / 'weights.pt'}")


def _quick(args: argparse.Namespace) -> None:
    from .quick import QUICK_CONFIG, run_quick

    run_quick(args.output, port=args.port, max_trials=args.max_trials, epochs=args.epochs, dataset=args.dataset,
              data_dir=args.data_dir, keep=args.keep, config=args.config or QUICK_CONFIG, progress=not args.no_progress)


def _export(args: argparse.Namespace) -> None:
    from .export import run_export

    table = run_export(args.source, args.output, front=args.front)
    print(table.to_string(index=False))
    print(f"exported {len(table)} model(s) to {args.output} (model.pt: TorchScript, model.onnx, weights.pt, arch.json)")


def _compare(args: argparse.Namespace) -> None:
    from .compare import run_compare

    settings = _settings(CompareSettings, args)
    table = run_compare(settings)
    print(table.to_string(index=False))
    print(f"table: {settings.output / 'comparison.csv'}, {settings.output / 'comparison.md'}; plot: "
          f"{settings.output / 'comparison.png'}")


def add_commands(commands: Any) -> None:
    """Add ``search``, ``quick``, ``export`` and ``compare`` to the sub-parsers action ``commands``."""
    search = add_command(commands, "search", _search, "one-shot NNI search (DARTS / GumbelDARTS) with DynOPool")
    search.description += "; --space MODEL converts a model that macs lists"
    # No help text: argparse would list the spaces, and that imports NNI (MODEL: see macs --help).
    search.add_argument("--space", default=SearchSettings.space, choices=SPACES, metavar="{cells,efficientnet,MODEL}")
    search.add_argument("--strategy", default=SearchSettings.strategy, choices=STRATEGY_NAMES)
    search.add_argument("--dataset", default=SearchSettings.dataset, choices=DATASETS, metavar="DATASET",
                        help="%(choices)s")
    search.add_argument("--data-dir", help="folder of a real data set (cifar100, aircraft, imagefolder)")
    search.add_argument("--download", action="store_true", help="download the data set into --data-dir")
    search.add_argument("--epochs", type=positive_int, default=SearchSettings.epochs)
    search.add_argument("--output", type=output_folder, default=str(SearchSettings.output))
    search.add_argument("--image-size", type=positive_int, default=SearchSettings.image_size)
    search.add_argument("--batch-size", type=positive_int, default=SearchSettings.batch_size)
    search.add_argument("--lr", type=float, default=SearchSettings.learning_rate, dest="learning_rate", metavar="LR",
                        help="learning rate of the weights (Adam)")
    search.add_argument("--alpha-lr", type=float, default=SearchSettings.alpha_learning_rate,
                        dest="alpha_learning_rate", metavar="ALPHA_LR", help="learning rate of the DynOPool scales")
    constraint = search.add_mutually_exclusive_group()
    constraint.add_argument("--gmacs-lambda", type=float,
                            help="lambda of eq. 4.8, relative to the initial GMACs (loss the initial cost is worth)")
    constraint.add_argument("--gmacs-budget", type=float, help="target GMACs per image")
    constraint.add_argument("--latency-lambda", type=float,
                            help="lambda of eq. 4.8 on the predicted latency, relative to the initial latency")
    constraint.add_argument("--latency-budget-ms", type=float, metavar="MS",
                            help="target latency per image (ms, on this device; measures a latency table "
                                 "once, cached)")
    search.add_argument("--latency-anchor", default=SearchSettings.latency_anchor, choices=ANCHORS, metavar="ANCHOR",
                        help="what the predicted latency is calibrated to, at the start and after every epoch: "
                             "'measured' (default) scales the table's prediction of the derived architecture by the "
                             "starting architecture's latency measured end to end in fresh processes (a budget means "
                             "measured ms; a budget search measures the architecture it ends with again); "
                             "'predicted' keeps the table's: %(choices)s")
    search.add_argument("--max-train-images", type=positive_int, help="use only the first N training images")
    search.add_argument("--seed", type=int, default=SearchSettings.seed)
    search.add_argument("--placement", default=SearchSettings.placement, choices=PLACEMENTS, metavar="PLACEMENT",
                        help="converted models (--space MODEL): DynOPool after a strided conv (eq. 5.2) or before "
                             "it: %(choices)s")
    quick = add_command(commands, "quick", _quick, "the quick-start nnictl experiment (experiments/quick.yml)")
    quick.add_argument("--output", type=output_folder, default="runs/quick")
    quick.add_argument("--config", type=Path, help="a quick-style nnictl config (default: experiments/quick.yml)")
    quick.add_argument("--port", type=int, help="web UI port (default: a free one)")
    quick.add_argument("--max-trials", type=positive_int, help="override maxTrialNumber")
    quick.add_argument("--epochs", type=positive_int, help="override the trial's epochs")
    quick.add_argument("--dataset", choices=DATASETS, metavar="DATASET",
                       help="override the trial's data set (default: the config's, the bundled digits): %(choices)s")
    quick.add_argument("--data-dir", help="its folder (fashion-mnist: default where the Debian package puts it)")
    quick.add_argument("--keep", action="store_true", help="leave the experiment running for its web UI")
    quick.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    export = add_command(commands, "export", _export, "standalone TorchScript/ONNX models of discovered architectures")
    export.add_argument("source", type=Path, help="a search output, a trial folder or an nnictl experiment folder")
    export.add_argument("--output", type=output_folder, default="runs/export")
    export.add_argument("--front", action="store_true", help="export the accuracy/GMACs Pareto front, not the best")
    compare = add_command(commands, "compare", _compare, "discovered architectures vs EfficientNet-B0/B1, one recipe")
    compare.add_argument("architectures", nargs="*", type=Path, help="arch.json files or folders holding one")
    compare.add_argument("--output", type=output_folder, default=str(CompareSettings.output))
    compare.add_argument("--dataset", default=CompareSettings.dataset, choices=DATASETS, metavar="DATASET",
                         help="%(choices)s")
    compare.add_argument("--data-dir")
    compare.add_argument("--epochs", type=positive_int, default=CompareSettings.epochs)
    compare.add_argument("--image-size", type=positive_int, default=CompareSettings.image_size)
    compare.add_argument("--batch-size", type=positive_int, default=CompareSettings.batch_size)
    compare.add_argument("--lr", type=float, default=CompareSettings.lr)
    compare.add_argument("--max-train-images", type=positive_int)
    compare.add_argument("--seeds", type=int, nargs="+", default=list(CompareSettings.seeds),
                         help="train every model once per seed")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``dynopool-nas`` command."""
    return cli.build_parser(add_commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``dynopool-nas`` command; return its exit status (0, 1 on failure, 2 for a bad argument)."""
    return cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
