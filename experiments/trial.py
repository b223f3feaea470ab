"""Trial program of the nnictl experiments in this folder (``python trial.py --space ...``):
:func:`strategies.commands.trial.main`, which reads the tuner's parameters, trains the chosen
architecture with DynOPool learning its scales and reports to NNI. The same program runs
without this file as ``python -m strategies.commands.trial``."""

import sys

from strategies.commands.trial import main

if __name__ == "__main__":
    sys.exit(main())
