"""Secrets are read only from private files: a password others could read or swap is
refused with the chmod/chown that fixes it, and no message ever shows the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenhad import credentials
from xenhad.errors import CredentialError


def private_file(path: Path, content: str = "s3cret\n", mode: int = 0o600) -> Path:
    path.write_text(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "refused"),
    [(0o600, False), (0o400, False), (0o640, True), (0o620, True), (0o604, True), (0o602, True),
     (0o666, True)],
)
def test_secret_file_permissions(tmp_path: Path, mode: int, refused: bool) -> None:
    path = private_file(tmp_path / "secret", "x\n", mode=mode)
    if refused:
        with pytest.raises(CredentialError, match=rf"run chmod 600 {path}$"):
            credentials.read_secret(file=path)
    else:
        assert credentials.read_secret(file=path) == "x"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_secret_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = private_file(tmp_path / "secret")
    os.chown(path, 4321, -1)
    with pytest.raises(CredentialError) as caught:
        credentials.read_secret(file=path)
    assert str(caught.value) == (
        f"secret file {path} is owned by uid 4321, not by root or by uid 0 running xenhad: "
        f"run chown root {path}"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"pw\r\n", "pw"),
        (b"pw\n\n", "pw\n"),
        (b"pw", "pw"),
    ],
)
def test_only_one_trailing_newline_is_stripped(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    assert credentials.read_secret(file=path) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\n", "is empty"), (b"\xff\xfe", "is not UTF-8 text"), (b"x" * 70000, "is larger than")],
)
def test_unusable_secret_contents_are_refused(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(CredentialError, match=expected):
        credentials.read_secret(file=path)


def test_a_directory_or_fifo_is_not_a_secret_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    for path in (tmp_path, fifo):
        with pytest.raises(CredentialError, match="is not a regular file"):
            credentials.read_secret(file=path)


def test_a_systemd_credential_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    private_file(tmp_path / "xapi-password", "pw\n", mode=0o400)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert credentials.read_secret(credential="xapi-password", env=env) == "pw"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../shadow", "with space"])
def test_a_credential_name_cannot_leave_the_credentials_directory(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(CredentialError, match="is invalid: use letters, digits"):
        credentials.read_secret(credential=name, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_exactly_one_source_is_named() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        credentials.read_secret()
    with pytest.raises(ValueError, match="exactly one"):
        credentials.read_secret(file="/x", credential="y")


def test_no_refusal_shows_the_secret(tmp_path: Path) -> None:
    path = private_file(tmp_path / "secret", "hunter2\n", mode=0o644)
    with pytest.raises(CredentialError) as caught:
        credentials.read_secret(file=path)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value)
