"""Test support shared by every test layer.

Raw IMAP clients, accounts and messages, TLS material, the proxy as a child process, and
the Prometheus fixture.
"""
