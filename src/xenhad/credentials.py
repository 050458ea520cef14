"""Secrets (the XAPI password, later BMC passwords) read from a file or a systemd credential.

A config file names where a secret lives and never holds it, so the config may be
world-readable and shown in bug reports. The secret files themselves must be private: one
readable or writable by group or others (anything but 0600 or 0400), or owned by someone
other than root or the user running xenhad (os.geteuid(): as root, chown a file away to see
it refused), is refused rather than used, because a secret others could read (or swap) is
not a secret.

No message or repr built here ever contains a secret's value.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from xenhad.errors import CredentialError

MAX_SECRET_BYTES = 64 * 1024
"""A password file larger than this is the wrong file (a log, a disk image): refuse it."""

# systemd refuses these in LoadCredential= too (credential names are file names in
# $CREDENTIALS_DIRECTORY); checking here gives the operator our message instead of ENOENT.
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,255}$")


def valid_credential_name(name: str) -> bool:
    return bool(_CREDENTIAL_NAME.match(name)) and name not in (".", "..")


def secret_file_problem(st: os.stat_result, path: Path) -> str | None:
    """Why a secret file with this stat must not be used, as the tail of a one-line message
    (what is wrong, then the fix), or None when it is fine."""
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file: point it at a file holding only the secret ({path})"
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        return (f"is readable or writable by group or others (mode {mode:04o}): run "
                f"chmod 600 {path}")
    if st.st_uid not in (0, os.geteuid()):
        return (
            f"is owned by uid {st.st_uid}, not by root or by uid {os.geteuid()} running "
            f"xenhad: run chown root {path}"
        )
    return None


def check_secret_file(path: Path) -> None:
    """Raise CredentialError unless `path` is a private, regular, readable file.

    Used by config validation so `xenhad check-config` catches a bad secret file before
    the daemon needs it; `read_secret` repeats the checks on the file it actually opens.
    """
    _read_file(path, keep=False)


def credential_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    """Where systemd put credential `name` for this service (LoadCredential=/SetCredential=)."""
    if not valid_credential_name(name):
        raise CredentialError(
            f"credential name {name!r} is invalid: use letters, digits and _ . : @ + - only"
        )
    environ = os.environ if env is None else env
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        raise CredentialError(
            f"credential {name!r}: $CREDENTIALS_DIRECTORY is not set: run xenhad under systemd "
            f"with LoadCredential={name}:/path/to/secret, or use a password_file instead"
        )
    return Path(directory) / name


def read_secret(
    *,
    file: Path | str | None = None,
    credential: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The secret held in `file`, or in systemd credential `credential`; exactly one of them.

    One trailing newline (as `echo secret > file` leaves) is stripped; nothing else is, since
    a password may legitimately end in spaces.
    """
    if (file is None) == (credential is None):
        raise ValueError("read_secret needs exactly one of file= or credential=")
    path = Path(file) if file is not None else credential_path(str(credential), env)
    data = _read_file(path, keep=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(
            f"secret file {path} is not UTF-8 text: write the password as plain text"
        ) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise CredentialError(f"secret file {path} is empty: write the password into it")
    return text


def _read_file(path: Path, *, keep: bool) -> bytes:
    # Checks run on the opened descriptor (fstat), not on the name, so the file cannot be
    # swapped between check and read. O_NONBLOCK: a FIFO named by mistake must not hang us.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CredentialError(
            f"secret file {path} cannot be opened ({e.strerror}): create it, readable by "
            f"root only (chmod 600 {path})"
        ) from None
    try:
        problem = secret_file_problem(os.fstat(fd), path)
        if problem is not None:
            raise CredentialError(f"secret file {path} {problem}")
        if not keep:
            return b""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = os.read(fd, 8192)
            except OSError as e:
                raise CredentialError(
                    f"secret file {path} cannot be read ({e.strerror}): check the file"
                ) from None
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_SECRET_BYTES:
                raise CredentialError(
                    f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes: "
                    "point it at a file holding only the secret"
                )
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
