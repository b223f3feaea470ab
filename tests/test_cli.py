import re
import subprocess
import sys

import pytest

from dynopool_nas.cli import main, run_demo


def test_demo_trains_and_reports_accuracy_gmacs_and_sizes(capsys):
    history = run_demo(epochs=2, image_size=16, progress=False)
    out = capsys.readouterr().out
    assert len(history) == 2 and history[-1].val_accuracy > 0.3
    assert re.search(r"final: val top-1 \d+\.\d+%, \d+\.\d+ MMACs", out)
    assert set(history[-1].sizes) == {"features.3", "features.7", "features.11"}
    assert all(f"{name}: scale" in out for name in history[-1].sizes)


def test_macs_command_compares_human_and_dynopool(capsys):
    assert main(["macs", "vgg16_cifar", "--image-size", "32", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"vgg16_cifar human\s+0\.31\d+ GMACs", out) and "DynOPool share" in out


def test_macs_command_prices_both_placements(capsys):
    gmacs = {}
    for placement in ("after", "before"):
        assert main(["macs", "resnet50_cifar", "--image-size", "32", "--num-classes", "100",
                     "--placement", placement]) == 0
        gmacs[placement] = float(re.search(r"DynOPool\s+([\d.]+) GMACs", capsys.readouterr().out).group(1))
    assert gmacs["after"] == pytest.approx(1.646, abs=0.01) and gmacs["before"] == pytest.approx(1.305, abs=0.01)


def test_console_entry_point_runs_the_demo():
    done = subprocess.run(
        [sys.executable, "-m", "dynopool_nas.cli", "demo", "--epochs", "1", "--image-size", "12", "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "val top-1" in done.stdout


def test_bad_command_line_is_refused():
    done = subprocess.run([sys.executable, "-m", "dynopool_nas.cli", "macs", "no_such_model"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr
