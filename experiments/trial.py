"""Trial program of the nnictl experiments in this folder: reads the tuner's parameters, trains
the chosen architecture with DynOPool learning its scales, reports to NNI
(see :mod:`strategies.commands.trial`)."""

from __future__ import annotations

import argparse
import sys

import nni

from dynopool_nas import DATASETS
from dynopool_nas.convert import PLACEMENTS
from search_spaces.registry import SPACES
from strategies.commands.trial import run_trial


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default="cells", choices=SPACES)
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes) per trial: DDP when > 1")
    parser.add_argument("--accelerator", default="auto", help="auto, gpu or cpu")
    parser.add_argument("--placement", default="after", choices=PLACEMENTS,
                        help="converted models: DynOPool after a strided conv (eq. 5.2) or before it")
    args = parser.parse_args()
    params = nni.get_next_parameter() or {}
    try:
        final = run_trial(params, space=args.space, dataset=args.dataset, epochs=args.epochs,
                          image_size=args.image_size, batch_size=args.batch_size, data_dir=args.data_dir,
                          devices=args.devices, accelerator=args.accelerator, placement=args.placement)
    except Exception as error:
        print(f"trial failed with parameters {params}: {type(error).__name__}: {error}", file=sys.stderr)
        raise
    if final:
        print(f"trial finished: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
