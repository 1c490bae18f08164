"""imapproxy: a transparent IMAP proxy and traffic inspector."""

__version__ = "0.1.0"
