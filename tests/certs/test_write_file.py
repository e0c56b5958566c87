"""Private keys on disk (`certs.storage.write_file`, used by the CA's state directory and by
`meshcp bootstrap`): whole or not at all, their mode from the first byte, never written
through a symlink, in a directory only the owner may enter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshcp.certs.storage import DirectoryStore, write_file


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_an_existing_world_readable_file_is_replaced_not_rewritten(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("old")
    key.chmod(0o644)
    before = os.stat(key).st_ino
    write_file(key, b"secret", 0o600)
    assert key.read_bytes() == b"secret"
    assert mode_of(key) == 0o600
    # a new file, renamed in: the old inode (which others may hold open) never held the key
    assert os.stat(key).st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_a_symlink_is_replaced_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    link = tmp_path / "key.pem"
    link.symlink_to(victim)
    write_file(link, b"secret", 0o600)
    assert victim.read_text() == "do not touch"
    assert not link.is_symlink() and link.read_bytes() == b"secret"


def test_a_large_file_is_written_whole(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    write_file(tmp_path / "big", data, 0o644)
    assert (tmp_path / "big").read_bytes() == data
    assert mode_of(tmp_path / "big") == 0o644


async def test_the_state_directory_is_narrowed_to_its_owner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    await DirectoryStore(state).write("root.key", b"secret", secret=True)
    assert mode_of(state) == 0o700
    assert mode_of(state / "root.key") == 0o600
