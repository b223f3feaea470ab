"""The command line of the plain-PyTorch package, ``demo`` and ``macs``, and the parser that
:mod:`strategies.commands.cli` (the ``dynopool-nas`` entry point) extends with the NNI commands.

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


class Names:
    """The names held by ``module.attribute``, imported only when an argument is checked against
    them or a command's help lists them (``add_argument(..., metavar=...)`` keeps argparse from
    reading them while the parser is built)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(getattr(importlib.import_module(self.module), self.attribute)))

    def __contains__(self, name: object) -> bool:
        return name in tuple(self)


DATASETS = Names("dynopool_nas.data", "DATASETS")
MODELS = Names("dynopool_nas.models", "MODELS")
PLACEMENTS = Names("dynopool_nas.convert", "PLACEMENTS")


def output_folder(value: str) -> Path:
    """argparse type of an output folder: checked while the command line is read."""
    try:
        return writable_folder(value, option=None)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(value: str) -> int:
    """argparse type of a count or a size."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def format_sizes(sizes: dict[str, tuple[int, int]]) -> str:
    return "  ".join(f"{name}={h}x{w}" for name, (h, w) in sizes.items())


def run_demo(
    epochs: int = 15,
    image_size: int = 32,
    gmacs_lambda: float = 0.3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    dataset: str = "digits",
    data_dir: str | None = None,
) -> list[EpochResult]:
    """Convert a small CNN with DynOPool and train it on ``dataset`` (the bundled digits by default,
    CPU, ~15 s; any name of :data:`~dynopool_nas.data.DATASETS`, e.g. ``fashion-mnist``)."""
    import torch
    from torch.utils.data import DataLoader

    from ._checks import check_image_size, train_subset
    from .convert import dynopool_layers, dynopoolify
    from .cost import GMACsCost, count_macs
    from .data import load_dataset
    from .models import small_cnn
    from .train import fit

    torch.manual_seed(seed)
    splits = load_dataset(dataset, image_size=image_size, root=data_dir, seed=seed)
    train_set, val_set = splits.train, splits.val
    train_loader = DataLoader(train_subset(train_set, None, batch_size), batch_size=batch_size, shuffle=True,
                              drop_last=True)
    val_loader = DataLoader(val_set, batch_size=256)
    input_size = (splits.in_chans, image_size, image_size)
    human = small_cnn(num_classes=splits.num_classes, in_chans=splits.in_chans)
    check_image_size(human, input_size)
    model = dynopoolify(human)
    cost = GMACsCost.from_model(model, input_size)
    print(f"DynOPool demo: small CNN on {dataset} at {image_size}x{image_size}, "
          f"{len(train_set)} train / {len(val_set)} val images, lambda={gmacs_lambda}")
    print(f"human model: {count_macs(human, input_size).gmacs * 1e3:.3f} MMACs, "
          f"pool sizes {format_sizes(cost.feature_map_sizes())}")

    def report(result: EpochResult) -> None:
        print(f"epoch {result.epoch:2d}  loss {result.train_loss:.3f}  val top-1 {result.val_accuracy:6.2%}  "
              f"{result.gmacs * 1e3:.3f} MMACs  {format_sizes(result.sizes)}")

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
    run_demo(args.epochs, args.image_size, args.gmacs_lambda, args.batch_size, args.seed, not args.no_progress,
             dataset=args.dataset, data_dir=args.data_dir)


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
    print("feature maps:", format_sizes(GMACsCost.from_model(converted, input_size).feature_map_sizes()))


def add_command(commands: Any, name: str, run: Callable[[argparse.Namespace], None], summary: str) -> Any:
    """A sub-command that runs ``run(args)``, with the options every command has."""
    parser = commands.add_parser(name, help=summary, description=summary)
    parser.add_argument("--debug", action="store_true", help="on failure, show the full traceback")
    parser.set_defaults(run=run)
    return parser


def build_parser(*extensions: Callable[[Any], None]) -> argparse.ArgumentParser:
    """The command line of ``demo`` and ``macs``; each of ``extensions`` adds its sub-commands
    to the sub-parsers action it is given (with :func:`add_command`)."""
    parser = argparse.ArgumentParser(
        prog="dynopool-nas", description="DynOPool, a learnable resizing layer, and its search with NNI.",
        epilog="A failed command prints one line and exits with 1 (2 for a bad argument); add --debug to a command "
               "for the traceback.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = add_command(commands, "demo", _demo, "train a DynOPool CNN on the bundled digits and report")
    demo.add_argument("--epochs", type=positive_int, default=15)
    demo.add_argument("--dataset", default="digits", choices=DATASETS, metavar="DATASET", help="%(choices)s")
    demo.add_argument("--data-dir", help="folder of a data set that is not bundled (e.g. fashion-mnist's idx files)")
    demo.add_argument("--image-size", type=positive_int, default=32)
    demo.add_argument("--gmacs-lambda", type=float, default=0.3,
                      help="lambda of eq. 4.8, relative to the initial GMACs (loss the whole initial cost is worth)")
    demo.add_argument("--batch-size", type=positive_int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    for add in extensions:
        add(commands)
    macs = add_command(commands, "macs", _macs, "MACs of a human model and its DynOPool version (fvcore)")
    macs.add_argument("model", choices=MODELS, metavar="MODEL", help="%(choices)s")
    macs.add_argument("--image-size", type=positive_int, default=224)
    macs.add_argument("--num-classes", type=positive_int, default=1000)
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


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command of ``parser`` (default: :func:`build_parser`); return its exit status (0,
    1 on failure, 2 for a bad argument)."""
    parser = parser or build_parser()
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
