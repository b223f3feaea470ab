"""Learning curves of every committed run: for each ``docs/results/*_curves.csv`` a
``*_curves.png`` with each model's validation top-1 per epoch (mean over seeds, the band is
min-max): has the human model plateaued, do the DynOPool models still climb?

    python experiments/paper/curves.py
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pandas as pd
from _report import RESULTS
from matplotlib import pyplot

from dynopool_nas._utils import atomic_write


def plot_curves(csv: str) -> None:
    curves = pd.read_csv(csv)
    figure, axis = pyplot.subplots(figsize=(7, 4.2))
    for index, (model, rows) in enumerate(curves.groupby("model", sort=False)):
        per_epoch = rows.groupby("epoch")["val_top1"]
        mean, low, high = (100 * per_epoch.agg(f) for f in ("mean", "min", "max"))
        axis.plot(mean.index, mean, color=f"C{index % 10}", label=model, linewidth=1.4)
        axis.fill_between(mean.index, low, high, color=f"C{index % 10}", alpha=0.12)
    top = 100 * curves.groupby(["model", "epoch"])["val_top1"].mean().max()
    axis.set_ylim(top - 6, top + 0.8)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation top-1 (%), mean over seeds")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6.5, ncol=2)
    figure.tight_layout()
    target = csv.replace("_curves.csv", "_curves.png")

    def save(path):
        figure.savefig(path, dpi=110, format="png")

    atomic_write(target, save)
    pyplot.close(figure)
    print(target)


def main() -> None:
    for csv in sorted(RESULTS.glob("*_curves.csv")):
        plot_curves(str(csv))


if __name__ == "__main__":
    main()
