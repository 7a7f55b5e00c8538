"""`invoke metrics-config`: the Prometheus scrape config for this deployment.

The hub serves its metrics (JupyterHub's own and gpuhub's GPU metrics) at /hub/metrics,
where JupyterHub asks for a token with the ``read:metrics`` scope; `invoke up` makes one
for the hub's ``prometheus`` service under SECRETS_DIR. Prometheus reads that file.
"""

from __future__ import annotations

import yaml
from invoke import task

from gpuhub.core import names
from gpuhub.tasks.project import load

SCRAPE_PATH = "/hub/metrics"


def scrape_config(project, host: str | None = None) -> str:
    """The ``scrape_configs`` section of Prometheus's config file (YAML)."""
    s = project.settings
    if host is None:
        host = "localhost" if s.hub_bind_address in ("0.0.0.0", "::") else s.hub_bind_address
    job = {
        "job_name": f"gpuhub-{project.name}",
        "metrics_path": SCRAPE_PATH,
        "scheme": "https" if s.tls_cert else "http",
        "authorization": {"type": "Bearer",
                          "credentials_file": str(project.secrets_dir
                                                  / f"{project.name}-{names.METRICS_TOKEN_FILE}")},
        "static_configs": [{"targets": [f"{host}:{s.hub_port}"]}],
    }
    return yaml.safe_dump({"scrape_configs": [job]}, sort_keys=False)


@task(help={"host": "The hub's host name as Prometheus reaches it (default: HUB_BIND_ADDRESS, "
                    "localhost when that is every address)."})
def metrics_config(c, host=None):
    """Print the Prometheus scrape config for this hub's metrics (GPU use, labs, spawns)."""
    project = load()
    print(scrape_config(project, host), end="")
