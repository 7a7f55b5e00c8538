"""JupyterHub's side of one origin per user (gpuhub.core.origins says where things are).

Labs get their own host through ``JupyterHub.subdomain_host``; the login is refused on
any host but the hub's own, so an admin lured to ``<user>.HUB_DOMAIN/hub/login`` does not
leave a session on a user's origin.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuhub.core.origins import SHARED_ORIGIN_WARNING, hub_origin, isolated, request_hostname
from gpuhub.core.settings import Settings


@dataclass(frozen=True)
class LoginOnHubHostOnly:
    """``Authenticator.post_auth_hook``: a login on any host but HUB_DOMAIN is refused.

    Without it the hub's login page also answers on ``<user>.HUB_DOMAIN`` (the proxy sends
    every host it has no lab route for to the hub), and a session made there would be
    readable by that user's pages.
    """

    domain: str  # HUB_DOMAIN, lowercase (the settings make it so)
    origin: str  # the hub's origin, for the message

    def __call__(self, authenticator, handler, authentication):
        from tornado import web

        host = request_hostname(handler.request.host or "")
        if host != self.domain:
            authenticator.log.warning("Refused a login on host %r: the hub is %s",
                                      handler.request.host, self.origin)
            raise web.HTTPError(403, f"Log in at {self.origin}/hub/login, the hub's own "
                                     "address, not on another host.")
        return authentication


def update_origins(c, settings: Settings) -> None:
    """The hub at HUB_DOMAIN, labs at ``<user>.HUB_DOMAIN``; or, when the admin accepted
    USERS_CAN_ACT_AS_EACH_OTHER, labs under the hub's origin (admins' warning:
    :func:`template_vars`)."""
    if isolated(settings):
        c.JupyterHub.subdomain_host = hub_origin(settings)
        c.Authenticator.post_auth_hook = LoginOnHubHostOnly(settings.hub_domain,
                                                             hub_origin(settings))
    else:
        c.JupyterHub.subdomain_host = ""


def template_vars(settings: Settings) -> dict[str, str]:
    """The pages' origin warning: for admins, when labs share the hub's origin."""
    return {"gpuhub_shared_origin_warning": "" if isolated(settings) else SHARED_ORIGIN_WARNING}
