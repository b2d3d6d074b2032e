"""The ``ferry`` command: one entry point for the server roles and the tools that run beside them."""
