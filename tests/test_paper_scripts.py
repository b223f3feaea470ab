"""The paper's experiment scripts (experiments/paper/) run end to end, on the bundled digits with
tiny settings, and write their page with the command that made it; the pages go to a temporary
folder ($DYNOPOOL_NAS_RESULTS), never to docs/results/."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PAPER = Path(__file__).resolve().parents[1] / "experiments" / "paper"
TINY = ["--dataset", "digits", "--train-images", "128", "--epochs", "1", "--seeds", "0", "1"]

SCRIPTS = {  # script -> (arguments, page it writes)
    "table_5_1.py": ([*TINY, "--lambdas", "0.1"], "table_5_1_digits.md"),
    "table_5_2.py": (TINY, "table_5_2_digits.md"),
    "figure_5_2.py": ([*TINY, "--lambdas", "0", "0.3", "--resolutions", "24"], "figure_5_2_digits.md"),
    "figure_3_1.py": (TINY, "figure_3_1_digits.md"),
    "table_5_5.py": ([], "table_5_5.md"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_paper_script_writes_its_page_with_its_command(script, tmp_path):
    arguments, page = SCRIPTS[script]
    committed = PAPER.parents[1] / "docs" / "results" / page
    before = committed.stat().st_mtime_ns if committed.exists() else None
    env = {**os.environ, "DYNOPOOL_NAS_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(PAPER / script), *arguments], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / page).read_text()
    assert f"Command: `python experiments/paper/{script}" in text
    assert "|" in text  # a table of results
    for curves in tmp_path.glob("*_curves.csv"):  # every epoch of every run, with the test split's number
        table = pd.read_csv(curves)
        assert len(table) > 0 and table.notna().any().all()
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before  # docs/results untouched
