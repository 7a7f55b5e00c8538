"""The secret files compose hands the hub (/run/secrets), for unit tests of its config."""

from pathlib import Path

from gpuhub.core import names


def secrets_dir(tmp_path: Path) -> Path:
    """A folder holding the proxy and metrics tokens, as the hub's /run/secrets does."""
    folder = tmp_path / "run-secrets"
    folder.mkdir(exist_ok=True)
    (folder / names.PROXY_TOKEN_SECRET).write_text("proxy-token-for-tests\n")
    (folder / names.METRICS_TOKEN_SECRET).write_text("metrics-token-for-tests\n")
    return folder
