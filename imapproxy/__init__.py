"""imapproxy: a transparent IMAP proxy and traffic inspector."""

from imapproxy import compiled

__version__ = "0.1.0"

# Before any core module is imported: a compiled core older than its sources is not used.
compiled.guard()
