# TEST STAND-IN ONLY for quay.io/jupyter/tensorflow-notebook:cuda-* (LAB_BASE_IMAGE)
# (Jupyter Docker Stacks), used where no container registry is reachable.
# Built by tests/standins/build.sh from gpuhub-standin/debian:bookworm.
# Mimics the parts of docker-stacks the product relies on: user jovyan
# (uid 1000, gid 100 "users"), HOME /home/jovyan, NB_USER/NB_UID/NB_GID, a
# Python env at /opt/conda (here a venv, owned by jovyan, first on PATH) with
# jupyterlab 4, ipykernel and TensorFlow (tensorflow-cpu: no GPU here),
# tini -g as ENTRYPOINT, start-notebook.py / start-singleuser.py as CMD.
# pip must keep working as uid 1000 (the product installs jupyterhub into it).
# --build-arg TENSORFLOW= leaves TensorFlow out: gpuhub-standin/lab-base-slim, for the
# Swarm tier only, whose labs never import it and whose every node pulls the lab image
# from a registry (1.6 GB less to push and pull).
ARG BASE_IMAGE=gpuhub-standin/debian:bookworm
FROM ${BASE_IMAGE}

ARG NB_USER=jovyan
ARG NB_UID=1000
ARG NB_GID=100

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    SHELL=/bin/bash \
    NB_USER=${NB_USER} \
    NB_UID=${NB_UID} \
    NB_GID=${NB_GID} \
    CONDA_DIR=/opt/conda \
    HOME=/home/${NB_USER} \
    JUPYTER_PORT=8888 \
    PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN apt-get update -q \
 && apt-get install -yq --no-install-recommends \
      bzip2 ca-certificates git locales less procps python3 python3-venv tini wget \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --no-log-init --create-home --shell /bin/bash \
      --uid "${NB_UID}" --gid "${NB_GID}" "${NB_USER}" \
 && mkdir -p "${CONDA_DIR}" /etc/jupyter \
 && chown "${NB_UID}:${NB_GID}" "${CONDA_DIR}"

COPY start-notebook.sh /usr/local/bin/start-notebook.sh
RUN chmod 0755 /usr/local/bin/start-notebook.sh \
 && ln -s start-notebook.sh /usr/local/bin/start-notebook.py \
 && ln -s start-notebook.sh /usr/local/bin/start-singleuser.sh \
 && ln -s start-notebook.sh /usr/local/bin/start-singleuser.py \
 && printf '%s\n' \
      "c = get_config()  # noqa" \
      "c.ServerApp.ip = '0.0.0.0'" \
      "c.ServerApp.open_browser = False" \
      "c.ServerApp.port = int(__import__('os').environ.get('JUPYTER_PORT', 8888))" \
      > /etc/jupyter/jupyter_server_config.py

USER ${NB_UID}
WORKDIR /home/${NB_USER}

# Declared here, so the layers above are the same in both variants (one build, cached).
ARG TENSORFLOW=tensorflow-cpu
# The CA bundle is a BuildKit secret (TLS-intercepting egress in CI): it is
# readable by uid 1000 during this RUN only and never stored in a layer. The
# pip cache is a BuildKit cache mount so TensorFlow is downloaded only once.
RUN --mount=type=secret,id=extra_ca_certs,uid=1000,mode=0444 \
    --mount=type=cache,target=/tmp/pip-cache,uid=1000,gid=100 \
    set -e; \
    if [ -s /run/secrets/extra_ca_certs ]; then export PIP_CERT=/run/secrets/extra_ca_certs; fi; \
    export PIP_CACHE_DIR=/tmp/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1; \
    python3 -m venv "${CONDA_DIR}"; \
    pip install --upgrade pip setuptools wheel; \
    pip install 'jupyterlab>=4,<5' ipykernel ${TENSORFLOW}; \
    python -m ipykernel install --sys-prefix; \
    find "${CONDA_DIR}" -name '__pycache__' -prune -exec rm -rf {} +; \
    jupyter lab --version

# cache/secret mount points and installer leftovers (as docker-stacks, leave /tmp clean)
USER root
RUN rm -rf /tmp/pip-cache /tmp/tmp* /run/secrets
USER ${NB_UID}

# docker-stacks' own label: every lab container carries it next to gpuhub's labels, so the
# live tests that read a lab's holder from its labels see what they see on a real base.
LABEL maintainer="Jupyter Project <jupyter@googlegroups.com>"

EXPOSE 8888
ENTRYPOINT ["tini", "-g", "--"]
CMD ["start-notebook.py"]
