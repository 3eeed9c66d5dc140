"""model/atomic.py: a write is whole or absent; a staged directory appears whole, and a
race's loser discards its copy instead of touching the winner's."""

import os

import pytest

from model import atomic


def _temporaries(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    atomic.atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic.atomic_file(target, "w") as file:
        file.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert _temporaries(tmp_path) == []
    atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_a_staged_directory_appears_whole_and_a_race_loser_discards_its_copy(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(FileExistsError), atomic.staging_directory(target) as loser:
        (loser / "model.bin").write_bytes(b"loser")
        with atomic.staging_directory(target) as winner:  # another process, finishing first
            (winner / "model.bin").write_bytes(b"winner")
            assert not target.exists()  # nothing visible until complete
        assert (target / "model.bin").read_bytes() == b"winner"
    assert (target / "model.bin").read_bytes() == b"winner"
    assert _temporaries(tmp_path) == []
    with pytest.raises(FileExistsError):
        with atomic.staging_directory(target):
            pass
    with atomic.staging_directory(target, overwrite=True) as replacement:
        (replacement / "model.bin").write_bytes(b"new")
    assert (target / "model.bin").read_bytes() == b"new"
    assert _temporaries(tmp_path) == []


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path):
    target = tmp_path / "export"
    stale, fresh = tmp_path / ".export.stale", tmp_path / ".export.fresh"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    assert atomic.remove_stale_staging(target) == [stale]
    assert fresh.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
