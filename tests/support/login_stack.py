"""A test stack that logs in with a directory: slapd (support.directory) or the OIDC
provider (support.oidc), started on the gateway of the stack's own directory network,
which exists once the stack is up. So: up with a placeholder LDAP_URL, start the
identity servers there, then up again with their URLs (`invoke up` recreates the hub).
Used by the integration and the e2e login tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuhub.core import names
from harness.stack import Stack
from support import directory, oidc
from support.testca import make_ca


def first_settings(folder: Path, **extra: str) -> dict[str, str]:
    """Settings for the first `up` (AUTHENTICATOR=ldap, a placeholder server)."""
    folder.mkdir(parents=True, exist_ok=True)
    bind_password = folder / "ldap-bind-password"
    bind_password.write_text(directory.SEARCH_PASSWORD + "\n")
    bind_password.chmod(0o600)
    placeholder_ca, _key = make_ca(folder / "placeholder", "placeholder-ca")
    return {"AUTHENTICATOR": "ldap", "ADMIN_USERS": "", "ALLOWED_GROUPS": "gpu-users",
            "ADMIN_GROUPS": "lab-admins", "LDAP_URL": "ldaps://directory.invalid",
            "LDAP_CA_FILE": str(placeholder_ca), **ldap_settings(folder), **extra}


def ldap_settings(folder: Path) -> dict[str, str]:
    return {"LDAP_BIND_DN": directory.SEARCH_DN,
            "LDAP_BIND_PASSWORD_FILE": str(folder / "ldap-bind-password"),
            "LDAP_USER_BASE": directory.PEOPLE, "LDAP_GROUP_BASE": directory.GROUPS}


class DirectoryStack:
    """The stack (up), its directory network's gateway, and the identity servers on it."""

    def __init__(self, stack: Stack, folder: Path):
        self.stack, self.folder = stack, folder
        network = stack.inspect_network(names.directory_network(stack.project))
        self.gateway = network["IPAM"]["Config"][0]["Gateway"]
        self.slapd: directory.Directory | None = None
        self.provider: oidc.Provider | None = None

    def use_ldap(self) -> directory.Directory:
        """slapd on the gateway, and the hub logging in with it (LDAPS)."""
        self.slapd = directory.start(self.folder / "slapd", self.gateway)
        self.switch(AUTHENTICATOR="ldap", LDAP_URL=self.slapd.ldaps_url,
                    LDAP_CA_FILE=str(self.slapd.ca_file), **ldap_settings(self.folder))
        return self.slapd

    def use_oidc(self) -> oidc.Provider:
        """The OIDC provider on the gateway, and the hub logging in with it."""
        secret = self.folder / "oidc-client-secret"
        secret.write_text(oidc.CLIENT_SECRET + "\n")
        secret.chmod(0o600)
        self.provider = oidc.start(self.folder / "oidc", self.gateway,
                                   [f"{self.stack.url}/hub/oauth_callback"])
        self.switch(AUTHENTICATOR="oidc", OIDC_ISSUER=self.provider.issuer,
                    OIDC_CLIENT_ID=oidc.CLIENT_ID, OIDC_CLIENT_SECRET_FILE=str(secret),
                    OIDC_CA_FILE=str(self.provider.ca_file))
        return self.provider

    def switch(self, **settings: str) -> None:
        """New login settings, and the hub recreated with them (`invoke up`)."""
        for key in [k for k in self.stack.settings if k.startswith(("LDAP_", "OIDC_"))]:
            del self.stack.settings[key]
        self.stack.settings.update(settings)
        self.stack.write_env()
        self.stack.up("--no-build")

    def stop(self) -> None:
        for server in (self.slapd, self.provider):
            if server:
                server.stop()


def require_servers() -> None:
    """Fail (never a quiet skip) where slapd or the OIDC provider is missing: both are
    provisioned (.ci/provision)."""
    missing = [what for what, there in (
        (directory.MISSING, directory.available()),
        ("the OIDC provider: npm ci in tests/support/oidc_provider (Node.js 20.19+)",
         oidc.available())) if not there]
    if missing:
        pytest.fail(f"not installed: {'; '.join(missing)} (.ci/provision installs both)",
                    pytrace=False)
