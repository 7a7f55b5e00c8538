"""A stock DockerSpawner hub, to measure gpuhub's spawn latency against.

This mirrors jupyterhub-deploy-docker's ``basic-example/jupyterhub_config.py`` (the
configuration most DockerSpawner deployments start from), with three changes, each so the
comparison measures the spawner and not something else:

- login uses JupyterHub's own SharedPasswordAuthenticator (one throwaway password, any user
  name), so the benchmark needs no sign-up step (DummyAuthenticator's password is deprecated
  since JupyterHub 5.3);
- containers and volumes carry the benchmark's project name, never ``jupyter-*`` or
  ``jupyterhub-user-*``, so nothing collides with a real deployment on the same host;
- ``DockerSpawner.debug`` is off: gpuhub's labs do not log at debug level either.

Run only by ``bench/run.py`` through ``bench/stock-compose.yml``.
"""

import json
import os

c = get_config()  # noqa: F821 (provided by JupyterHub)

c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = os.environ["DOCKER_NOTEBOOK_IMAGE"]
# The upstream default is start-singleuser.sh; the benchmark passes the lab image's own
# command (a JSON list), the one gpuhub's labs run, so both hubs start the very same process.
c.DockerSpawner.cmd = json.loads(os.environ.get("DOCKER_SPAWN_CMD", '["start-singleuser.sh"]'))

c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.network_name = os.environ["DOCKER_NETWORK_NAME"]

notebook_dir = os.environ.get("DOCKER_NOTEBOOK_DIR") or "/home/jovyan/work"
c.DockerSpawner.notebook_dir = notebook_dir
prefix = os.environ["BENCH_PREFIX"]
c.DockerSpawner.prefix = prefix
c.DockerSpawner.volumes = {f"{prefix}-user-{{username}}": notebook_dir}
c.DockerSpawner.remove = True

c.JupyterHub.hub_ip = "jupyterhub"
c.JupyterHub.hub_port = 8080

c.JupyterHub.cookie_secret_file = "/data/jupyterhub_cookie_secret"
c.JupyterHub.db_url = "sqlite:////data/jupyterhub.sqlite"

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["BENCH_USER_PASSWORD"]
c.Authenticator.allow_all = True
