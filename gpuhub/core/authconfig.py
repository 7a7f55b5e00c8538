"""The login method AUTHENTICATOR names, as JupyterHub traits without any secret.

The hub applies it (``hubconfig.update_auth`` adds the secrets) and the host's
`invoke export-z2jh` exports it, so it imports only the standard library and gpuhub's core:
never the hub's packages, which the admin's host does not have.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.accounts import MIN_PASSWORD_LENGTH, USERNAME_PATTERN
from gpuhub.core.settings import Settings

SECRETS_DIR = Path(names.HUB_SECRETS_DIR)  # compose's secrets: where the CA files are


def auth_config(settings: Settings, secrets_dir: Path = SECRETS_DIR,
                endpoints: Mapping[str, str] | None = None) -> dict[str, dict]:
    """What AUTHENTICATOR configures, as {section: {trait: value}}, without any secret:
    the hub applies it (update_auth adds the secrets), `invoke export-z2jh` exports it.
    ``secrets_dir`` is where the CA files are; ``endpoints`` the OIDC provider's."""
    common = {"admin_users": set(settings.admin_users), "username_pattern": USERNAME_PATTERN}
    if settings.authenticator == "ldap":
        return _ldap_config(settings, secrets_dir, common)
    if settings.authenticator == "oidc":
        return _oidc_config(settings, secrets_dir, common, endpoints or {})
    return {
        "JupyterHub": {"authenticator_class": "gpuhub.hub.auth.GpuhubAuthenticator"},
        # NativeAuthenticator decides who may log in (its is_authorized flag, set by
        # `invoke adduser`); JupyterHub 5's own allow-list would refuse users created later.
        "Authenticator": {**common, "allow_all": True},
        # Its traits are declared with .tag(default=...), so their documented defaults are
        # not the real ones: set every one we rely on.
        "NativeAuthenticator": {
            "enable_signup": False, "open_signup": False,
            "minimum_password_length": MIN_PASSWORD_LENGTH, "check_common_password": True,
            "allowed_failed_logins": settings.login_max_failures,
            "seconds_before_next_try": settings.login_lockout_seconds,
        },
    }


def _ldap_config(settings: Settings, secrets_dir: Path, common: dict) -> dict[str, dict]:
    """An LDAP or Active Directory server (gpuhub.hub.directory.LdapAuthenticator)."""
    url = urllib.parse.urlsplit(settings.ldap_url)
    ldaps = url.scheme == "ldaps"
    ldap = {
        "server_address": url.hostname,
        "server_port": url.port or (636 if ldaps else 389),
        # ldaps: TLS from the first byte; ldap: StartTLS before any bind. Never in clear.
        "tls_strategy": "on_connect" if ldaps else "before_bind",
        # The login name is looked up (LdapAuthenticator.look_up), never pasted into a DN.
        "lookup_dn": True,
        "user_search_base": settings.ldap_user_base,
        "user_attribute": settings.ldap_user_attribute,
    }
    if settings.ldap_bind_dn:
        ldap["lookup_dn_search_user"] = settings.ldap_bind_dn
    return {
        "JupyterHub": {"authenticator_class": "gpuhub.hub.directory.LdapAuthenticator"},
        # Who may log in and who is admin: LdapAuthenticator.authenticate, with messages.
        "Authenticator": {**common, "allow_all": True, "manage_groups": True},
        "LDAPAuthenticator": ldap,
        "LdapAuthenticator": {
            # Its certificate is always verified (gpuhub.hub.directory.VerifiedTls), against this.
            "ca_file": str(secrets_dir / names.LDAP_CA_SECRET) if settings.ldap_ca_file else "",
            "user_filter": settings.ldap_user_filter,
            "group_search_base": settings.ldap_group_base,
            "allowed_hub_groups": set(settings.allowed_groups),
            "admin_hub_groups": set(settings.admin_groups),
        },
    }


def _oidc_config(settings: Settings, secrets_dir: Path, common: dict,
                 endpoints: Mapping[str, str]) -> dict[str, dict]:
    """An OpenID Connect provider (gpuhub.hub.directory.OidcAuthenticator)."""
    everyone = settings.allowed_groups == ("*",)
    oauth = {
        "authorize_url": endpoints.get("authorization_endpoint", ""),
        "token_url": endpoints.get("token_endpoint", ""),
        "userdata_url": endpoints.get("userinfo_endpoint", ""),
        "client_id": settings.oidc_client_id,
        "scope": settings.oidc_scopes.split(),
        "username_claim": settings.oidc_username_claim,
        "login_service": "your institution's account",
        "enable_pkce": True,
        "validate_server_cert": True,
        "manage_groups": True,
        "auth_state_groups_key": f"oauth_user.{settings.oidc_groups_claim}",
        "allow_all": everyone,
        "admin_groups": set(settings.admin_groups),
        "custom_403_message": ("Your account is not in a group allowed on this hub "
                               f"({', '.join(settings.allowed_groups)}). Ask the hub's admin."),
    }
    if not everyone:
        oauth["allowed_groups"] = set(settings.allowed_groups)
    if settings.oidc_ca_file:
        oauth["http_request_kwargs"] = {"ca_certs": str(secrets_dir / names.OIDC_CA_SECRET)}
    return {"JupyterHub": {"authenticator_class": "gpuhub.hub.directory.OidcAuthenticator"},
            "Authenticator": common, "GenericOAuthenticator": oauth}


def discover_oidc(issuer: str, ca_file: str | None, timeout: float = 15) -> dict:
    """The provider's endpoints from ``{issuer}/.well-known/openid-configuration``, with
    its certificate checked (against ``ca_file`` if given); ValueError saying what is wrong."""
    url = f"{issuer}/.well-known/openid-configuration"
    context = ssl.create_default_context(cafile=ca_file or None)
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            config = json.loads(answer.read(1_000_000))
    except (OSError, ValueError) as err:
        raise ValueError(f"OIDC_ISSUER={issuer!r}: could not read {url}: {err}; check the "
                         "URL, that the hub can reach it, and OIDC_CA_FILE") from None
    if not isinstance(config, dict) or config.get("issuer") != issuer:
        said = config.get("issuer") if isinstance(config, dict) else None
        raise ValueError(f"OIDC_ISSUER={issuer!r}: the provider calls itself {said!r}; "
                         "set OIDC_ISSUER to exactly that")
    endpoints = {}
    for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
        value = config.get(key)
        if not isinstance(value, str) or not value.startswith("https://"):
            raise ValueError(f"OIDC_ISSUER={issuer!r}: its configuration has no https "
                             f"{key} ({value!r})")
        endpoints[key] = value
    return endpoints
