# TEST STAND-IN ONLY for quay.io/jupyterhub/jupyterhub (HUB_BASE_IMAGE), used where no
# container registry is reachable. Built by tests/standins/build.sh from
# gpuhub-standin/debian:bookworm. Like the official image's OS layer it has
# python3 + pip + venv, nodejs + npm, ca-certificates and tini, WORKDIR
# /srv/jupyterhub; unlike it, NO jupyterhub and NO configurable-http-proxy:
# the product Dockerfile installs those (pip with PIP_BREAK_SYSTEM_PACKAGES=1,
# npm install -g configurable-http-proxy).
ARG BASE_IMAGE=gpuhub-standin/debian:bookworm
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update -q \
 && apt-get install -yq --no-install-recommends \
      ca-certificates curl python3 python3-pip python3-venv nodejs npm tini \
 && ln -sf python3 /usr/bin/python \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/jupyterhub
EXPOSE 8000
CMD ["bash"]
