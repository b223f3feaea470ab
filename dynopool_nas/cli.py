"""The ``dynopool-nas`` command line.

Building the parser imports neither torch nor NNI: each command imports what it needs when it
runs, so ``dynopool-nas --help`` answers at once. Output folders are checked while the command
line is read, before any work. A command that fails prints one line (what failed and what to
do) and exits with status 1, or 2 for a bad argument; ``--debug`` shows the traceback. Messages
of NNI, Lightning and PyTorch known to be harmless here are silenced (:mod:`dynopool_nas._quiet`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checks import UsageError, writable_folder
from ._quiet import quiet

if TYPE_CHECKING:
    from .train import EpochResult


class _Names:
    """The names held by ``module.attribute``, imported only when an argument is checked against
    them or a command's help lists them (``add_argument(..., metavar=...)`` keeps argparse from
    reading them while the parser is built)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(getattr(importlib.import_module(self.module), self.attribute)))

    def __contains__(self, name: object) -> bool:
        return name in tuple(self)


DATASETS = _Names("dynopool_nas.data", "DATASETS")
MODELS = _Names("dynopool_nas.models", "MODELS")
PLACEMENTS = _Names("dynopool_nas.convert", "PLACEMENTS")
SPACES = _Names("strategies.search", "SPACES")


def _output_folder(value: str) -> Path:
    """argparse type of an output folder: checked while the command line is read."""
    try:
        return writable_folder(value, option=None)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(value: str) -> int:
    """argparse type of a count or a size."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _format_sizes(sizes: dict[str, tuple[int, int]]) -> str:
    return "  ".join(f"{name}={h}x{w}" for name, (h, w) in sizes.items())


def run_demo(
    epochs: int = 15,
    image_size: int = 32,
    gmacs_lambda: float = 0.3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[EpochResult]:
    """Convert a small CNN with DynOPool and train it on the bundled digits (CPU, ~1 minute)."""
    import torch
    from torch.utils.data import DataLoader

    from ._checks import check_image_size, train_subset
    from .convert import dynopool_layers, dynopoolify
    from .cost import GMACsCost, count_macs
    from .data import DigitsDataset
    from .models import small_cnn
    from .train import fit

    torch.manual_seed(seed)
    train_set = DigitsDataset("train", image_size=image_size)
    val_set = DigitsDataset("val", image_size=image_size)
    train_loader = DataLoader(train_subset(train_set, None, batch_size), batch_size=batch_size, shuffle=True,
                              drop_last=True)
    val_loader = DataLoader(val_set, batch_size=256)
    input_size = (DigitsDataset.in_chans, image_size, image_size)
    human = small_cnn(num_classes=DigitsDataset.num_classes, in_chans=DigitsDataset.in_chans)
    check_image_size(human, input_size)
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


def _demo(args: argparse.Namespace) -> None:
    run_demo(args.epochs, args.image_size, args.gmacs_lambda, args.batch_size, args.seed, not args.no_progress)


def _macs(args: argparse.Namespace) -> None:
    from ._checks import check_image_size
    from .convert import dynopoolify
    from .cost import GMACsCost, count_macs
    from .models import create_model

    human = create_model(args.model, num_classes=args.num_classes)
    input_size = (3, args.image_size, args.image_size)
    check_image_size(human, input_size)
    converted = dynopoolify(human, placement=args.placement)
    for label, model in (("human", human), ("DynOPool", converted)):
        report = count_macs(model, input_size)
        print(f"{args.model} {label:8s} {report.gmacs:8.4f} GMACs  DynOPool share {report.dynopool_share:.4%}")
    print("feature maps:", _format_sizes(GMACsCost.from_model(converted, input_size).feature_map_sizes()))


def _search(args: argparse.Namespace) -> None:
    from strategies.search import run_search

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
    print(f"architecture: {args.output / 'arch.json'}   weights: {args.output / 'weights.pt'}")


def _quick(args: argparse.Namespace) -> None:
    from strategies.quick import QUICK_CONFIG, run_quick

    run_quick(args.output, port=args.port, max_trials=args.max_trials, epochs=args.epochs, keep=args.keep,
              config=args.config or QUICK_CONFIG, progress=not args.no_progress)


def _export(args: argparse.Namespace) -> None:
    from strategies.standalone import run_export

    table = run_export(args.source, args.output, front=args.front)
    print(table.to_string(index=False))
    print(f"exported {len(table)} model(s) to {args.output} (model.pt: TorchScript, model.onnx, weights.pt, arch.json)")


def _compare(args: argparse.Namespace) -> None:
    from strategies.compare import run_compare

    table = run_compare(args.architectures, args.output, dataset=args.dataset, epochs=args.epochs,
                        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, data_dir=args.data_dir,
                        max_train_images=args.max_train_images, seeds=args.seeds)
    print(table.to_string(index=False))
    print(f"table: {args.output / 'comparison.csv'}, {args.output / 'comparison.md'}; plot: "
          f"{args.output / 'comparison.png'}")


def _command(commands: Any, name: str, run: Callable[[argparse.Namespace], None], summary: str) -> Any:
    """A sub-command that runs ``run(args)``, with the options every command has."""
    parser = commands.add_parser(name, help=summary, description=summary)
    parser.add_argument("--debug", action="store_true", help="on failure, show the full traceback")
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynopool-nas", description="DynOPool, a learnable resizing layer, and its search with NNI.",
        epilog="A failed command prints one line and exits with 1 (2 for a bad argument); add --debug to a command "
               "for the traceback.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = _command(commands, "demo", _demo, "train a DynOPool CNN on the bundled digits and report")
    demo.add_argument("--epochs", type=_positive_int, default=15)
    demo.add_argument("--image-size", type=_positive_int, default=32)
    demo.add_argument("--gmacs-lambda", type=float, default=0.3,
                      help="lambda of eq. 4.8, relative to the initial GMACs (loss the whole initial cost is worth)")
    demo.add_argument("--batch-size", type=_positive_int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    search = _command(commands, "search", _search, "one-shot NNI search (DARTS / GumbelDARTS) with DynOPool")
    search.description += "; --space MODEL converts a model that macs lists"
    # No help text: argparse would list the spaces, and that imports NNI (MODEL: see macs --help).
    search.add_argument("--space", default="cells", choices=SPACES, metavar="{cells,efficientnet,MODEL}")
    search.add_argument("--strategy", default="darts", choices=("darts", "gumbel-darts"))
    search.add_argument("--dataset", default="digits", choices=DATASETS, metavar="DATASET", help="%(choices)s")
    search.add_argument("--data-dir", help="folder of a real data set (cifar100, aircraft, imagefolder)")
    search.add_argument("--download", action="store_true", help="download the data set into --data-dir")
    search.add_argument("--epochs", type=_positive_int, default=5)
    search.add_argument("--output", type=_output_folder, default="runs/search")
    search.add_argument("--image-size", type=_positive_int, default=32)
    search.add_argument("--batch-size", type=_positive_int, default=64)
    search.add_argument("--lr", type=float, default=0.01, help="learning rate of the weights (Adam)")
    search.add_argument("--alpha-lr", type=float, default=0.01, help="learning rate of the DynOPool scales")
    constraint = search.add_mutually_exclusive_group()
    constraint.add_argument("--gmacs-lambda", type=float,
                            help="lambda of eq. 4.8, relative to the initial GMACs (loss the initial cost is worth)")
    constraint.add_argument("--gmacs-budget", type=float, help="target GMACs per image")
    search.add_argument("--max-train-images", type=_positive_int, help="use only the first N training images")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--placement", default="after", choices=PLACEMENTS, metavar="PLACEMENT",
                        help="converted models (--space MODEL): DynOPool after a strided conv (eq. 5.2) or before "
                             "it: %(choices)s")
    quick = _command(commands, "quick", _quick, "the quick-start nnictl experiment (experiments/quick.yml)")
    quick.add_argument("--output", type=_output_folder, default="runs/quick")
    quick.add_argument("--config", type=Path, help="a quick-style nnictl config (default: experiments/quick.yml)")
    quick.add_argument("--port", type=int, help="web UI port (default: a free one)")
    quick.add_argument("--max-trials", type=_positive_int, help="override maxTrialNumber")
    quick.add_argument("--epochs", type=_positive_int, help="override the trial's epochs")
    quick.add_argument("--keep", action="store_true", help="leave the experiment running for its web UI")
    quick.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    export = _command(commands, "export", _export, "standalone TorchScript/ONNX models of discovered architectures")
    export.add_argument("source", type=Path, help="a search output, a trial folder or an nnictl experiment folder")
    export.add_argument("--output", type=_output_folder, default="runs/export")
    export.add_argument("--front", action="store_true", help="export the accuracy/GMACs Pareto front, not the best")
    compare = _command(commands, "compare", _compare, "discovered architectures vs EfficientNet-B0/B1, one recipe")
    compare.add_argument("architectures", nargs="*", type=Path, help="arch.json files or folders holding one")
    compare.add_argument("--output", type=_output_folder, default="runs/compare")
    compare.add_argument("--dataset", default="digits", choices=DATASETS, metavar="DATASET", help="%(choices)s")
    compare.add_argument("--data-dir")
    compare.add_argument("--epochs", type=_positive_int, default=5)
    compare.add_argument("--image-size", type=_positive_int, default=32)
    compare.add_argument("--batch-size", type=_positive_int, default=64)
    compare.add_argument("--lr", type=float, default=0.05)
    compare.add_argument("--max-train-images", type=_positive_int)
    compare.add_argument("--seeds", type=int, nargs="+", default=[0], help="train every model once per seed")
    macs = _command(commands, "macs", _macs, "MACs of a human model and its DynOPool version (fvcore)")
    macs.add_argument("model", choices=MODELS, metavar="MODEL", help="%(choices)s")
    macs.add_argument("--image-size", type=_positive_int, default=224)
    macs.add_argument("--num-classes", type=_positive_int, default=1000)
    macs.add_argument("--placement", default="after", choices=PLACEMENTS, metavar="PLACEMENT",
                      help="DynOPool after a strided conv's activation (eq. 5.2) or before the conv: %(choices)s")
    return parser


def _failure(error: Exception, args: argparse.Namespace) -> tuple[str, int]:
    """The one line a failed command prints, and its exit status (2: a bad argument)."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if isinstance(error, UsageError):
        return message, 2
    if isinstance(error, RuntimeError) and "output size is too small" in message.lower() and "image_size" in args:
        return f"--image-size {args.image_size} is too small for the model ({message}); use a larger one", 2
    if not isinstance(error, (ValueError, FileNotFoundError)):  # ours say what to do; others need their name
        message = f"{type(error).__name__}: {message}"
    return f"{message} (--debug shows the traceback)", 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (0, 1 on failure, 2 for a bad argument)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        with quiet(tracing=True):
            args.run(args)
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message, status = _failure(error, args)
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return status
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
