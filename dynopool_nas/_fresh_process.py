"""``python -m dynopool_nas._fresh_process RESULT``: the other end of
:func:`~dynopool_nas.latency.measure_models` with ``fresh_process=True``. Reads the pickled
``(models, input_size, options)`` from standard input, measures them here, in an interpreter
that has run nothing else, and writes the milliseconds by name to ``RESULT`` (JSON)."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from dynopool_nas.latency import UNPICKLING_FAILED, measure_models


def main() -> None:
    try:
        models, input_size, options = pickle.load(sys.stdin.buffer)
    except (AttributeError, ImportError) as error:
        print(error, file=sys.stderr)
        sys.exit(UNPICKLING_FAILED)
    Path(sys.argv[1]).write_text(json.dumps(measure_models(models, input_size, **options)))


if __name__ == "__main__":
    main()
