"""Translate gpuhub's settings and profiles into a zero-to-jupyterhub (z2jh) Helm values file.

For admins who outgrow one GPU server. :func:`chart_values` maps every setting that has a
Kubernetes equivalent, :func:`notes` says, section by section, what has none and what to use
instead, and :func:`render` writes both as one commented ``values.yaml`` for
``helm upgrade --install … jupyterhub/jupyterhub``. Pure functions over validated
:class:`~gpuhub.core.settings.Settings` and :class:`~gpuhub.core.profiles.Profiles`: nothing here reads
files, the environment or Docker. Nothing secret is written: the database password and the
TLS key stay out, and the file says where they go instead.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from gpuhub.core import gpus, lablimits, names
from gpuhub.core.allocator import one_lab_per_gpu
from gpuhub.core.authconfig import auth_config
from gpuhub.core.names import LAB_HOME
from gpuhub.core.profiles import Profile, Profiles
from gpuhub.core.settings import Settings

# Where the notes tell an admin to mount the login CA files in the chart's hub pod.
K8S_SECRETS_DIR = Path("/etc/gpuhub/secrets")

HELM_REPO = "https://hub.jupyter.org/helm-chart/"
# JupyterHub version → the z2jh chart release whose hub image runs it (each tag's
# Chart.yaml appVersion); where two releases run the same JupyterHub, the later one.
CHART_FOR_JUPYTERHUB = {
    "5.2.1": "4.1.0",
    "5.3.0": "4.2.0",
    "5.4.0": "4.3.0",
    "5.4.1": "4.3.1",
    "5.4.3": "4.3.2",
    "5.4.4": "4.3.3",
    "5.4.5": "4.3.4",
    "5.4.6": "4.3.5",
    "5.5.0": "4.4.0",
}
# gpuhub persists only ~/work (a named volume); the rest of the home folder comes from the image.
HOME_MOUNT_PATH = f"{LAB_HOME}/work"
GPU_RESOURCE = "nvidia.com/gpu"
# A MIG instance under NVIDIA/k8s-device-plugin's "mixed" MIG strategy (migStrategy=mixed,
# since v0.7.0): one resource per profile, nvidia.com/mig-<profile>, e.g. nvidia.com/mig-1g.5gb.
MIG_RESOURCE = "nvidia.com/mig-{profile}"
COMMENT_WIDTH = 90


def chart_version(jupyterhub_version: str) -> str | None:
    """The z2jh chart release that runs this JupyterHub version, if one is known."""
    return CHART_FOR_JUPYTERHUB.get(jupyterhub_version)


def _release(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def chart_before(jupyterhub_version: str) -> tuple[str, str] | None:
    """(chart, its JupyterHub): the newest known chart that runs an earlier patch release of
    the same JupyterHub minor release (chart 4.4.0, JupyterHub 5.5.0, for 5.5.4), if any."""
    wanted = _release(jupyterhub_version)
    if wanted is None or len(wanted) < 2:
        return None
    earlier = [(release, hub) for hub in CHART_FOR_JUPYTERHUB
               if (release := _release(hub)) and release[:2] == wanted[:2] and release < wanted]
    if not earlier:
        return None
    hub = max(earlier)[1]
    return CHART_FOR_JUPYTERHUB[hub], hub


def split_image(ref: str) -> tuple[str, str]:
    """``registry:5000/lab:1.2`` → (``registry:5000/lab``, ``1.2``); no tag means ``latest``.

    A digest reference stays whole with an empty tag: the chart joins ``name:tag`` only
    when the tag is not empty.
    """
    if "@" in ref:
        return ref, ""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def allow_growth(settings: Settings) -> bool:
    """The same TF_FORCE_GPU_ALLOW_GROWTH rule the hub applies."""
    return gpus.allow_growth(settings.gpu_policy, settings.gpu_allow_growth)

def _number(value: str | float) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def profile_entry(profile: Profile, growth: bool) -> dict:
    """One KubeSpawner ``profile_list`` entry for a gpuhub profile."""
    entry: dict = {"display_name": profile.display_name, "slug": profile.slug}
    if profile.description:
        entry["description"] = profile.description
    if profile.default:
        entry["default"] = True
    override: dict = {}
    if profile.image:  # otherwise singleuser.image (LAB_IMAGE)
        override["image"] = profile.image
    if profile.cpu_limit is not None:
        override["cpu_limit"] = _number(profile.cpu_limit)
    if profile.mem_limit is not None:
        # KubeSpawner reads "16G" as Docker does (K, M, G, T are powers of 1024).
        override["mem_limit"] = profile.mem_limit
    if profile.gpus:
        resource = MIG_RESOURCE.format(profile=profile.gpu_slice) if profile.gpu_slice \
            else GPU_RESOURCE
        gpus = {resource: str(profile.gpus)}
        override["extra_resource_limits"] = gpus
        override["extra_resource_guarantees"] = dict(gpus)
        environment = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
        if growth:
            environment["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    else:
        # CUDA images set NVIDIA_VISIBLE_DEVICES=all: on a node whose default runtime is
        # nvidia, a pod that asked for no GPU would otherwise see every GPU.
        environment = {"NVIDIA_VISIBLE_DEVICES": "void"}
    override["environment"] = environment
    entry["kubespawner_override"] = override
    return entry


def _database(url: str) -> dict:
    """hub.db for DATABASE_URL, without its password (or any query string)."""
    if not url or url.startswith("sqlite"):
        return {"type": "sqlite-pvc"}
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{host}" if parts.username else host
    return {"type": "postgres", "url": urlunsplit((parts.scheme, netloc, parts.path, "", ""))}


def _plain(value):
    """A value YAML can hold: sets as sorted lists."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def login_config(settings: Settings, endpoints: dict | None = None) -> dict[str, dict]:
    """The hub's login config (authconfig.auth_config: the same, minus secrets), with the
    CA files where the notes say to mount them. native: the chart's own NativeAuthenticator
    (its entry point ``native``), set up as gpuhub sets it up."""
    config = _plain(auth_config(settings, K8S_SECRETS_DIR, endpoints))
    if settings.authenticator == "native":
        config["JupyterHub"]["authenticator_class"] = "native"
    return config


def chart_values(settings: Settings, profiles: Profiles, endpoints: dict | None = None) -> dict:
    """The Helm values: only what gpuhub configures, the chart's defaults for the rest."""
    s = settings
    name, tag = split_image(s.lab_image)
    singleuser: dict = {
        "image": {"name": name, "tag": tag},
        # Each image's own command, as on Docker: gpuhub's lab image starts the leaner
        # gpuhub-singleuser, and a profile's own image keeps its own command.
        "cmd": None,
        "defaultUrl": "/lab",
        "startTimeout": s.spawn_timeout,
        "storage": {"type": "dynamic", "homeMountPath": HOME_MOUNT_PATH},
    }
    # auto is the Docker host's size: the cluster's nodes have their own (see notes).
    if lablimits.lab_cpus(s.lab_cpu_limit) is not None:
        singleuser["cpu"] = {"limit": _number(s.lab_cpu_limit)}
    if s.lab_mem_limit not in ("auto", "none"):
        singleuser["memory"] = {"limit": s.lab_mem_limit}
    growth = allow_growth(s)
    singleuser["profileList"] = [profile_entry(p, growth) for p in profiles.profiles]

    auth = login_config(s, endpoints)
    hub = {
        "config": {
            **auth,
            "JupyterHub": {
                **auth["JupyterHub"],
                # Deprecated and without effect since JupyterHub 2 (the chart still sets
                # it): admins hold the admin role's access:servers scope, so they can
                # open every user's lab, with the chart as with gpuhub (docs/explanation/
                # security-model.md, Users and each other). False, so the values do not suggest otherwise.
                "admin_access": False,
                "log_level": s.log_level,
            },
        },
        "db": _database(s.database_url),
    }

    if s.tls_cert:
        https: dict = {"enabled": True, "type": "secret",
                       "secret": {"name": tls_secret_name(s), "key": "tls.key", "crt": "tls.crt"}}
    else:
        https = {"enabled": False}

    if s.idle_timeout:
        # gpuhub runs the culler with --timeout only; it then checks every timeout/2.
        cull = {"enabled": True, "timeout": s.idle_timeout,
                "every": max(1, s.idle_timeout // 2)}
    else:
        cull = {"enabled": False}

    return {"hub": hub, "proxy": {"https": https}, "singleuser": singleuser, "cull": cull}


def tls_secret_name(settings: Settings) -> str:
    return f"{settings.compose_project_name}-tls"


def _gpu_notes(s: Settings, profiles: Profiles) -> list[str]:
    paragraphs = [
        "GPUs: the NVIDIA device plugin gives each pod the nvidia.com/gpu it asks for, for "
        "itself alone; that is GPU_POLICY=exclusive. GPU_POLICY=shared and round-robin, and "
        "GPU_PINS, have no direct equivalent. To share GPUs, turn on time-slicing in the "
        "device plugin's config (sharing.timeSlicing: each GPU is advertised as `replicas` "
        "GPUs) or partition MIG-capable GPUs (migStrategy=single: profiles keep asking for "
        "nvidia.com/gpu; mixed: a profile's gpu_slice asks for nvidia.com/mig-<profile>). To "
        "reserve GPUs, label (and taint) their nodes, give a profile a node_selector (and "
        "tolerations) in kubespawner_override, and offer it only to its users with a "
        "profile_list callable in hub.extraConfig.",
    ]
    if not one_lab_per_gpu(s.gpu_policy):
        paragraphs.append(f"This hub uses GPU_POLICY={s.gpu_policy}: until time-slicing is "
                          "on, each GPU lab gets GPUs of its own.")
    if s.gpu_pins:
        paragraphs.append("GPU_PINS is set and not exported: reserve nodes as above.")
    if s.gpu_limits:
        paragraphs.append("GPU_LIMITS is set and not exported: a profile's nvidia.com/gpu is "
                          "the most a lab gets; a ResourceQuota caps a namespace's total.")
    if s.gpu_devices not in ("auto", "none"):
        paragraphs.append(f"GPU_DEVICES={s.gpu_devices} is not exported: the device plugin "
                          "offers every GPU of a node; keep GPUs out through its config or "
                          "node labels.")
    sliced = sorted({p.gpu_slice for p in profiles.profiles if p.gpu_slice})
    if sliced:
        paragraphs.append(
            "MIG: profiles with gpu_slice ask for "
            + ", ".join(MIG_RESOURCE.format(profile=k) for k in sliced)
            + ", the names the NVIDIA device plugin advertises under its mixed MIG strategy "
            "(migStrategy=mixed; with single, every instance is an nvidia.com/gpu and these "
            "profiles would wait for ever). Partition the nodes' GPUs to match (nvidia-mig-parted "
            "or the GPU Operator's MIG manager).")
    if any(p.gpus for p in profiles.profiles):
        paragraphs.append("A GPU profile's pod waits (until startTimeout) while no node has a "
                          "free GPU; gpuhub hides GPU profiles on a host without GPUs instead.")
    return paragraphs


def _reclaim_notes(s: Settings, profiles: Profiles) -> list[str]:
    """gpuhub's GPU reclaim and time limits: what the chart's culler can and cannot say."""
    paragraphs = []
    ages = sorted({p.max_age for p in profiles.profiles if p.max_age})
    if ages:
        paragraphs.append(
            "Profiles' max_age is not exported: the chart's culler has one cull.maxAge "
            f"(seconds) for every server, not one per profile (here: {', '.join(map(str, ages))} "
            "s). Set cull.maxAge to the one you want for all, or run a culler per profile.")
    if s.gpu_idle_timeout:
        paragraphs.append(
            f"GPU_IDLE_TIMEOUT={s.gpu_idle_timeout} (a lab whose GPUs stay under "
            f"{s.gpu_idle_utilisation} % is stopped) has no chart equivalent: the culler reads "
            "kernel activity only. NVIDIA's DCGM exporter gives the utilisation to build it on.")
    return paragraphs


def _login_notes(s: Settings) -> list[str]:
    if s.authenticator == "native":
        return ["authenticator_class native is NativeAuthenticator, set up as gpuhub sets it "
                "up; gpuhub's subclass (bcrypt checks off the event loop) needs a hub image "
                "with gpuhub installed."]
    mode = {"ldap": "LDAP (gpuhub.hub.directory.LdapAuthenticator)",
            "oidc": "OpenID Connect (gpuhub.hub.directory.OidcAuthenticator)"}[s.authenticator]
    secret = {"ldap": ("LDAPAuthenticator", "lookup_dn_search_password", "LDAP_BIND_PASSWORD_FILE"),
              "oidc": ("GenericOAuthenticator", "client_secret", "OIDC_CLIENT_SECRET_FILE")}
    section, trait, setting = secret[s.authenticator]
    notes = [f"Login: {mode}, as gpuhub sets it up; it needs a hub image with gpuhub "
             "installed (hub.image), and the chart's hub must reach the directory."]
    if s.authenticator == "oidc" or s.ldap_bind_dn:
        notes.append(f"No secret here: give {section}.{trait} (the content of {setting}) in a "
                     "second values file kept apart from this one (mode 0600), as hub: "
                     f"{{config: {{{section}: {{{trait}: ...}}}}}}.")
    ca = s.ldap_ca_file if s.authenticator == "ldap" else s.oidc_ca_file
    if ca:
        name = names.LDAP_CA_SECRET if s.authenticator == "ldap" else names.OIDC_CA_SECRET
        notes.append(f"The CA file ({ca}) is expected at {K8S_SECRETS_DIR}/{name} in the hub "
                     "pod: mount it there from a Secret or ConfigMap with hub.extraVolumes and "
                     "hub.extraVolumeMounts.")
    if s.authenticator == "oidc":
        notes.append(f"Register {{the hub's public URL}}/hub/oauth_callback as a redirect URI "
                     f"of the client {s.oidc_client_id} at the provider.")
    return notes


def notes(settings: Settings, profiles: Profiles) -> dict[str, list[str]]:
    """Comment paragraphs for each top-level section (and "" for the header): what does
    not map, and what to do instead."""
    s = settings
    release = s.compose_project_name
    chart = chart_version(s.jupyterhub_version)
    if chart:
        version = (f"Chart {chart} runs JupyterHub {s.jupyterhub_version}, as this hub does "
                   "(JUPYTERHUB_VERSION); keep the two in step when you upgrade.")
    else:
        chart = "CHART_VERSION"
        version = (f"No chart release known to gpuhub runs JupyterHub {s.jupyterhub_version} "
                   "(JUPYTERHUB_VERSION): use the chart whose appVersion is that version "
                   f"({HELM_REPO} lists them); the lab image's JupyterHub must match the hub's.")
        if before := chart_before(s.jupyterhub_version):
            version += (f" The newest chart gpuhub knows for it, {before[0]}, runs JupyterHub "
                        f"{before[1]}: older than this hub's, so wait for a newer one or set "
                        "hub.image to a hub image that runs this version.")
    header = [
        "zero-to-jupyterhub (z2jh) Helm chart values, written by `invoke export-z2jh` from "
        "gpuhub's settings and profiles. No secrets. Install with:",
        f"  helm repo add jupyterhub {HELM_REPO}",
        f"  helm upgrade --install {release} jupyterhub/jupyterhub --version {chart} \\",
        f"    --namespace {release} --create-namespace --values THIS_FILE",
        version,
        "Not carried over: users and passwords (they live in the hub database, see hub.db), "
        "the cookie secret (everyone logs in again), work folders (copy them into the new "
        "volumes), and what only Docker needs: HUB_PORT and HUB_BIND_ADDRESS (the chart's "
        "proxy-public Service or an Ingress take their place), SECRETS_DIR, image builds "
        "(push LAB_IMAGE and profile images to a registry the cluster pulls from) and "
        "LAB_PIDS_LIMIT (on Kubernetes a node-wide kubelet setting, podPidsLimit).",
    ]
    hub = _login_notes(s)
    if not s.database_url:
        hub.append("hub.db: SQLite on the hub's volume, as with gpuhub; to keep users and "
                   "passwords, copy jupyterhub.sqlite from `invoke backup` onto it.")
    elif s.database_url.startswith("sqlite"):
        hub.append("hub.db: DATABASE_URL names an SQLite file; the chart keeps SQLite on the "
                   "hub's own volume: copy the database there to keep users and passwords.")
    else:
        hub.append("hub.db.url is DATABASE_URL without its password and query string; its "
                   "host must resolve from the hub pod. Give the password in a second values "
                   "file kept apart from this one (mode 0600), as hub: {db: {password: ...}}, "
                   "and add back query options you need (?sslmode=...) to the url.")
    if s.tls_cert:
        secret = tls_secret_name(s)
        proxy = [
            f"HTTPS with the certificate in the Kubernetes TLS secret {secret}; this file "
            "holds no key. Create the secret before installing, from the files TLS_CERT and "
            "TLS_KEY name:",
            f"  kubectl create secret tls {secret} --namespace {release} "
            "--cert=CERT_FILE --key=KEY_FILE",
            "The proxy also redirects plain HTTP (port 80) to HTTPS, as HUB_HTTP_REDIRECT_PORT "
            "does. Or let the chart get a Let's Encrypt certificate: type letsencrypt, hosts.",
        ]
    else:
        proxy = ["Plain HTTP, as this hub serves now. For HTTPS: type letsencrypt with hosts "
                 "and letsencrypt.contactEmail, or type secret with a Kubernetes TLS secret."]
    singleuser = [
        f"Work folders: a volume per user at {HOME_MOUNT_PATH}, as with gpuhub; set "
        "storage.capacity (the chart's default is 10Gi) and, if needed, "
        "storage.dynamic.storageClass. image: LAB_IMAGE, as pushed to your registry.",
        "Limits: Kubernetes reserves a pod's CPU and memory limits on its node unless a lower "
        "guarantee (cpu.guarantee, memory.guarantee) is set.",
        *(["LAB_MEM_LIMIT=auto (the Docker host's memory less a reserve) is not carried "
           "over: set memory.limit for your nodes, below their allocatable memory."]
          if s.lab_mem_limit == "auto" else []),
        "Environment is set per profile: CPU labs see no GPU (NVIDIA_VISIBLE_DEVICES=void, "
        "as gpuhub sets it).",
        *_gpu_notes(s, profiles),
    ]
    if s.shared_data_dir:
        singleuser.append(
            f"SHARED_DATA_DIR={s.shared_data_dir} is not exported: a host folder exists on "
            "one node only. Mount a ReadOnlyMany volume (e.g. NFS) at ~/shared with "
            "storage.extraVolumes and storage.extraVolumeMounts (readOnly: true).")
    cull = ([f"Labs idle for IDLE_TIMEOUT={s.idle_timeout} seconds are stopped, as with gpuhub."]
            if s.idle_timeout else ["IDLE_TIMEOUT=0: labs are never culled, as with gpuhub."])
    cull += _reclaim_notes(s, profiles)
    return {"": header, "hub": hub, "proxy": proxy, "singleuser": singleuser, "cull": cull}


def _comment(paragraphs: list[str]) -> str:
    """``# `` comment lines: each paragraph wrapped, one indented with two spaces kept as is."""
    lines = []
    for paragraph in paragraphs:
        if paragraph.startswith("  "):
            lines.append(paragraph)
        else:
            lines += textwrap.wrap(paragraph, width=COMMENT_WIDTH, break_on_hyphens=False)
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def render(settings: Settings, profiles: Profiles, endpoints: dict | None = None) -> str:
    """The values file: each top-level section under its comments. ``endpoints``: the OIDC
    provider's (AUTHENTICATOR=oidc), as authconfig.discover_oidc reads them."""
    values = chart_values(settings, profiles, endpoints)
    comments = notes(settings, profiles)
    parts = [_comment(comments[""])]
    for key, value in values.items():
        body = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False,
                              allow_unicode=True, width=100)
        parts.append("\n" + _comment(comments.get(key, [])) + body)
    return "".join(parts)
