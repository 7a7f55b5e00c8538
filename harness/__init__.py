"""The real-stack harness that the tests and the benchmark share.

A gpuhub stack under a compose project of its own (``stack``), a Hub and lab client
(``hub``), the one ``wait_until`` (``wait``), and the Docker broker between a recording
fake daemon and hostile requests (``fake_docker``, ``hostile_docker``). It lives outside
``tests/`` so that ``bench/`` imports it as a package, not by putting ``tests/`` on
``sys.path``; test-only helpers stay in ``tests/support``.

Importing it makes ``*.localhost`` resolve to loopback, as in a browser (``loopback``):
each lab is served at ``<user>.localhost`` in a test stack.
"""

from pathlib import Path

from . import loopback

loopback.install()

ROOT = Path(__file__).resolve().parents[1]  # the repository
