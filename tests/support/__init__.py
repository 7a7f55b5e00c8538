"""Test-only helpers: identity servers, the browser, the GPU double's state, mock Docker.

The stack harness that the benchmark shares (stack, Hub client, ``wait_until``) is the
top-level package ``harness``.
"""
