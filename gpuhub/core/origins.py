"""One origin per user: the hub at HUB_DOMAIN, each user's lab at ``<user>.HUB_DOMAIN``.

Everything a user serves under their lab's URL is theirs to write (they can change the
server's code), so a page there runs with the rights of whoever opens it on that origin.
A separate origin per lab is the only fence the browser itself keeps: the hub's login
cookie is host-only (never sent to a lab's host), and a lab's scripts cannot read the
hub's pages or send it credentialed API calls (no CORS). JupyterHub does the routing
(``JupyterHub.subdomain_host``, gpuhub.hub.origins); the proxy routes by host
(``--host-routing``). This module says where things are, from the settings alone.
"""

from __future__ import annotations

from gpuhub.core.settings import Settings

# The proxy's option (docker-compose.yml, the swarm proxy service) that routes by host.
HOST_ROUTING_ARG = "--host-routing"
DEFAULT_PORTS = {"http": 80, "https": 443}
SHARED_ORIGIN_WARNING = (
    "Labs share the hub's origin (USERS_CAN_ACT_AS_EACH_OTHER=true): any user can act as "
    "anyone who opens a link into their lab, an admin included. Set HUB_DOMAIN to a DNS "
    "name with a wildcard record and USERS_CAN_ACT_AS_EACH_OTHER=false to stop it.")


def isolated(settings: Settings) -> bool:
    """Each user's lab on its own origin (the default)."""
    return not settings.users_can_act_as_each_other


def scheme(settings: Settings) -> str:
    return "https" if settings.tls_cert else "http"


def hub_origin(settings: Settings) -> str:
    """HUB_PUBLIC_URL when set, else ``scheme://HUB_DOMAIN[:HUB_PORT]``, the port left out
    when it is the scheme's own."""
    if settings.hub_public_url:
        return settings.hub_public_url
    port = "" if settings.hub_port == DEFAULT_PORTS[scheme(settings)] else f":{settings.hub_port}"
    host = f"[{settings.hub_domain}]" if ":" in settings.hub_domain else settings.hub_domain
    return f"{scheme(settings)}://{host}{port}"


def lab_origin_example(settings: Settings, user: str = "<user>") -> str:
    """Where a user's lab is served (for messages; JupyterHub names the real host)."""
    if not isolated(settings):
        return hub_origin(settings)
    origin = hub_origin(settings)
    return origin.replace("://", f"://{user}.", 1)


def proxy_routing_args(settings: Settings) -> str:
    """The proxy's routing option: by host when labs have their own origins."""
    return HOST_ROUTING_ARG if isolated(settings) else ""


def request_hostname(host_header: str) -> str:
    """The host name of a Host header (``name[:port]`` or ``[v6]:port``), lowercased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
