import threading

import pytest

from dynopool_nas._utils import CHECKSUMS, atomic_folder, check_together, write_together


def test_files_written_together_are_checked_together(tmp_path):
    write_together(tmp_path, {"arch.json": lambda p: p.write_text("{}"), "weights.pt": lambda p: p.write_bytes(b"w")})
    check_together(tmp_path, ["arch.json", "weights.pt"])
    assert (tmp_path / CHECKSUMS).read_text().splitlines()[1].endswith("  weights.pt")  # sha256sum's format


def test_a_result_interrupted_while_written_over_an_older_one_is_refused(tmp_path):
    write_together(tmp_path, {"weights.pt": lambda p: p.write_bytes(b"old"), "arch.json": lambda p: p.write_text("1")})

    def killed(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_together(tmp_path, {"weights.pt": lambda p: p.write_bytes(b"new"), "arch.json": killed})
    with pytest.raises(ValueError, match=r"weights\.pt is not the file written with the rest"):
        check_together(tmp_path, ["arch.json", "weights.pt"])
    with pytest.raises(ValueError, match=r"model\.pt is not the file"):
        check_together(tmp_path, ["model.pt"])


def test_a_failed_folder_leaves_the_previous_one_and_no_trace(tmp_path):
    with atomic_folder(tmp_path / "out", marker="done") as building:
        (building / "done").write_text("first")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "out", marker="done") as building:
        (building / "done").write_text("second")
        raise RuntimeError("killed")
    assert (tmp_path / "out" / "done").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_of_other_files_or_a_file_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for path, message in ((tmp_path / "mine", "choose a new or empty folder"), (tmp_path / "file", "is a file")):
        with pytest.raises(ValueError, match=message), atomic_folder(path, marker="done"):
            pytest.fail("no work may start")
    assert (tmp_path / "mine" / "notes.txt").read_text() == (tmp_path / "file").read_text() == "keep"


def test_writers_racing_for_one_folder_leave_one_whole_set(tmp_path):
    both_building = threading.Barrier(2)

    def write(tag):
        with atomic_folder(tmp_path / "out", marker="done") as building:
            for index in range(20):
                (building / f"{index}.txt").write_text(tag)
            both_building.wait()
            (building / "done").write_text(tag)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    contents = {p.read_text() for p in (tmp_path / "out").iterdir()}
    assert len(contents) == 1 and len(list((tmp_path / "out").iterdir())) == 21
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
