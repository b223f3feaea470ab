import re
import subprocess
import sys

import pytest

from dynopool_nas.cli import run_demo
from strategies.commands.cli import main


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
        [sys.executable, "-m", "strategies.commands.cli", "demo", "--epochs", "1", "--image-size", "12",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "val top-1" in done.stdout


def test_bad_command_line_is_refused():
    done = subprocess.run([sys.executable, "-m", "strategies.commands.cli", "macs", "no_such_model"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def _status(arguments: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of the command line ``arguments`` (argparse exits; commands return)."""
    try:
        status = main(arguments)
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("module", ["strategies.commands.cli", "dynopool_nas.cli"])
def test_help_imports_neither_torch_nor_nni(module):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "COMMAND" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "dynopool_nas._checks" in imported  # the package was imported, and the CLI ran
    assert not {name.split(".")[0] for name in imported} & {"torch", "nni", "pytorch_lightning"}
    assert {name for name in imported if name.startswith("strategies")} <= {
        "strategies", "strategies.commands", "strategies.commands.cli", "strategies.commands.settings"}


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        (["search", "--space", "nowhere"], 2, "invalid choice: 'nowhere'"),
        (["search", "--dataset", "cifar100", "--data-dir", "{tmp}/missing", "--output", "{tmp}/out"], 1,
         "folder {tmp}/missing does not exist"),
        (["search", "--output", "{tmp}/file"], 2, "is a file, not a folder"),
        (["export", "{tmp}/run", "--output", "{tmp}/file/export"], 2, "lies under the file"),
        (["search", "--epochs", "0"], 2, "argument --epochs: must be at least 1"),
        (["macs", "small_cnn", "--image-size", "4"], 2, "--image-size 4 is too small for the model"),
    ],
)
def test_errors_are_one_line_with_a_usage_or_failure_status(tmp_path, capsys, arguments, status, message):
    (tmp_path / "file").write_text("not a folder")
    got, err = _status([a.format(tmp=tmp_path) for a in arguments], capsys)
    assert got == status
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"dynopool-nas {arguments[0]}: error: ")


def test_a_malformed_architecture_is_one_line_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "arch.json").write_text('{"schema_version": 1, "choices": ')
    (run / "weights.pt").write_bytes(b"")
    status, err = _status(["export", str(run), "--output", str(tmp_path / "export")], capsys)
    assert status == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("dynopool-nas export: error: ") and str(run.name) in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["search", "--dataset", "cifar100", "--data-dir", str(tmp_path / "missing"), "--output", str(tmp_path),
              "--debug"])


def test_image_size_smallest_that_works_is_named():
    from dynopool_nas._checks import UsageError, check_image_size
    from dynopool_nas.models import small_cnn

    model = small_cnn(num_classes=10, in_chans=1)
    check_image_size(model, (1, 8, 8))  # three 2x2 max-pools: 8 is the smallest size
    with pytest.raises(UsageError, match=r"--image-size 7 is too small for the model.*use at least 8"):
        check_image_size(model, (1, 7, 7))
    assert model.training


def test_failure_from_the_entry_point_is_one_line():
    done = subprocess.run([sys.executable, "-m", "strategies.commands.cli", "macs", "small_cnn", "--image-size", "4"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dynopool-nas macs: error: --image-size 4 is too small for the model (a layer's output would be empty); "
        "use at least 8"
    ]


def test_a_pooling_window_larger_than_the_map_is_blamed_on_the_image_size():
    import argparse

    import torch
    import torch.nn.functional as F

    from dynopool_nas.cli import _failure

    with pytest.raises(RuntimeError) as raised:
        F.max_pool2d(torch.zeros(1, 1, 1, 1), 2)
    message, status = _failure(raised.value, argparse.Namespace(image_size=4))
    assert status == 2 and message.startswith("--image-size 4 is too small for the model (")
    message, status = _failure(RuntimeError("CUDA error"), argparse.Namespace(image_size=4))
    assert status == 1 and message == "RuntimeError: CUDA error (--debug shows the traceback)"


def test_demo_trains_on_the_data_set_it_is_given(capsys):
    assert main(["demo", "--dataset", "digits-stretched", "--epochs", "1", "--image-size", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "small CNN on digits-stretched at 16x16" in out and "final: val top-1" in out


def test_demo_without_the_fashion_mnist_files_says_where_to_get_them(tmp_path, capsys):
    status = main(["demo", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "dataset-fashion-mnist" in err and "--download" in err
