#!/bin/sh
# Minimal stand-in for docker-stacks' start-notebook.py / start-singleuser.py:
# under JupyterHub (JUPYTERHUB_API_TOKEN set) run jupyterhub-singleuser,
# otherwise `jupyter lab`. Extra arguments and $NOTEBOOK_ARGS are passed on.
set -e
case "$(basename "$0")" in
  start-singleuser*) cmd="jupyterhub-singleuser" ;;
  *) if [ -n "${JUPYTERHUB_API_TOKEN:-}" ]; then cmd="jupyterhub-singleuser"
     else cmd="jupyter ${DOCKER_STACKS_JUPYTER_CMD:-lab}"; fi ;;
esac
# shellcheck disable=SC2086
exec $cmd ${NOTEBOOK_ARGS:-} "$@"
