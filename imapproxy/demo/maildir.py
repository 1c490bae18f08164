"""Users and mail of a throwaway Dovecot, written straight to disk: passwd files, Maildir++
folders, subscriptions and delivered messages (``MailStore``).

Works while Dovecot runs: a new passwd file is read at the next login, a message renamed into
new/ or cur/ is seen at the next mailbox sync. Files belong to ``RunAs``'s mail user.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

from imapproxy.demo.dovecot_config import RunAs, Workdir
from imapproxy.wire.grammar import encode_mutf7

__all__ = ["MailStore", "user_key"]

_USERNAME_RE = re.compile(r"^[A-Za-z0-9_@-][A-Za-z0-9._@-]*$")
_MAILDIR_FLAGS = frozenset("DFPRST")
_SEQ = itertools.count()  # unique Maildir file names within this process


def user_key(name: str) -> str:
    """The name Dovecot looks a user up by; ValueError for a name unsafe as a file name."""
    # Dovecot lowercases user names (auth_username_format = %Lu) before lookups.
    if not _USERNAME_RE.match(name) or ".." in name:
        raise ValueError(f"invalid user name {name!r} (letters, digits, . _ @ - only)")
    return name.lower()


class MailStore:
    """The passdb/userdb files and Maildirs below one ``Workdir``."""

    def __init__(self, workdir: Workdir, run_as: RunAs) -> None:
        self.workdir = workdir
        self.run_as = run_as

    def add_user(self, name: str, password: str) -> None:
        """Create (or replace) a user; usable for LOGIN immediately, also while running.

        Each user has its own passwd file (passdb path ``users/%u``): Dovecot re-reads a
        passwd file at most once per second, so appending to a shared file could be missed
        by a login in the same second, while a new file is always read fresh.
        """
        key = user_key(name)
        if any(c in password for c in ":\r\n\0"):
            raise ValueError("password must not contain ':', CR, LF or NUL")
        self.workdir.prepare()
        maildir = self.maildir(key)
        for sub in ("cur", "new", "tmp"):
            self._mkdir(maildir / sub)
        # Home "<root>/./<name>" makes Dovecot chroot into <root> before dropping to the
        # mail uid, so the mail processes need no access to workdir's ancestors (pytest's
        # tmp dirs are 0700 root).
        home_root = self.workdir.home_root
        home = f"{home_root}/./{key}" if self.run_as.chroot else str(home_root / key)
        uid, gid = self.run_as.mail_uid, self.run_as.mail_gid
        line = f"{key}:{{PLAIN}}{password}:{uid}:{gid}::{home}::\n"
        users_dir = self.workdir.users_dir
        tmp = users_dir / f".{key}.tmp"
        tmp.write_text(line)
        os.chmod(tmp, 0o600)
        os.replace(tmp, users_dir / key)

    def maildir(self, user: str) -> Path:
        return self.workdir.home_root / user_key(user) / "Maildir"

    def deliver(
        self,
        user: str,
        message: bytes,
        folder: str = "INBOX",
        flags: str = "",
        *,
        internaldate: float | None = None,
    ) -> Path:
        """Write ``message`` as-is into the user's Maildir; return the file's path.

        ``folder`` uses "/" as hierarchy separator (as the IMAP namespace does) and is
        created and subscribed if needed; ``flags`` are Maildir info letters (D draft,
        F flagged, R answered, S seen, T deleted, e.g. "FS"): empty means an unseen message
        in new/, anything else a message in cur/ with those flags. ``internaldate`` (Unix
        time) pins IMAP INTERNALDATE, which Dovecot takes from the file's mtime.
        """
        bad = set(flags) - _MAILDIR_FLAGS
        if bad:
            raise ValueError(f"unknown Maildir flags {''.join(sorted(bad))!r}; use D F P R S T")
        root = self.maildir(user)
        if not root.is_dir():
            raise ValueError(f"unknown user {user!r}; call add_user() first")
        box = root if folder.upper() == "INBOX" else self._ensure_folder(root, folder)
        now_us = time.time_ns() // 1000
        base = f"{now_us // 10**6}.M{now_us % 10**6}P{os.getpid()}Q{next(_SEQ)}.imapproxy"
        tmp = box / "tmp" / base
        with open(tmp, "xb") as f:
            f.write(message)
        self._chown(tmp)
        if internaldate is not None:
            os.utime(tmp, (internaldate, internaldate))
        if flags:
            dest = box / "cur" / f"{base}:2,{''.join(sorted(set(flags)))}"
        else:
            dest = box / "new" / base
        os.rename(tmp, dest)
        return dest

    def _ensure_folder(self, root: Path, folder: str) -> Path:
        parts = folder.split("/")
        if any(not p or "." in p or p.startswith("~") for p in parts):
            raise ValueError(f"unsupported folder name {folder!r} (no '.', empty parts or '~')")
        # modified UTF-7: the on-disk and on-wire form of non-ASCII mailbox names
        encoded = [encode_mutf7(p).decode("ascii") for p in parts]
        box = root / ("." + ".".join(encoded))
        if not box.is_dir():
            for sub in ("cur", "new", "tmp"):
                self._mkdir(box / sub)
            marker = box / "maildirfolder"
            marker.touch()
            self._chown(marker)
        self._subscribe(root, encoded)
        return box

    def _subscribe(self, root: Path, parts: list[str]) -> None:
        # Dovecot 2.3 "V 2" subscriptions format: hierarchy levels separated by TAB.
        subs = root / "subscriptions"
        entry = "\t".join(parts)
        lines = subs.read_text().splitlines() if subs.exists() else []
        names = lines[2:] if lines[:1] == ["V\t2"] else lines
        if entry in names:
            return
        tmp = root / "tmp" / f"subscriptions.{os.getpid()}.{next(_SEQ)}"
        tmp.write_text("V\t2\n\n" + "".join(n + "\n" for n in [*names, entry]))
        self._chown(tmp)
        os.replace(tmp, subs)

    def _mkdir(self, path: Path) -> None:
        missing: list[Path] = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=0o700)
            self._chown(d)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.run_as.mail_uid, self.run_as.mail_gid)
