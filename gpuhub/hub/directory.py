"""Logging in with the institution's accounts: LDAP / Active Directory, and OpenID Connect.

Both authenticators turn what the directory says into the same hub account
(:func:`hub_account`):

- the directory's name made lowercase, or refused with a message if it still breaks
  gpuhub's user name rules (a lab's container, volume and URL are named after it), so no
  account is ever half-created;
- its groups, which become hub groups (``manage_groups``): ``GPU_LIMITS=@students=1``
  works for directory users as for native ones;
- refused, with a message, unless one of its groups is in ALLOWED_GROUPS (``*``: all);
- admin while in ADMIN_GROUPS (or named in ADMIN_USERS), and no longer once it is not.

LDAP lookups are blocking network calls (ldap3): they run in a bounded pool of threads,
never on the hub's event loop, and a flood beyond the pool is answered 429 at once.
Any error talking to the directory refuses the login (503, with what went wrong in the
hub's log); the server's certificate is always verified.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from ldapauthenticator.ldapauthenticator import TlsStrategy
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Set, Unicode

from gpuhub.core.accounts import USERNAME_PATTERN, USERNAME_RULE
from gpuhub.core.settings import GROUP_NAME_PATTERN
from gpuhub.hub.auth import HashingPool

EVERYONE = "*"
# Directory lookups wait on the network, not the CPU: more threads than bcrypt gets, and
# still a bound on the logins that may wait for them.
LOOKUPS = HashingPool(workers=8, limit=64)
CONNECT_TIMEOUT = 10  # seconds: a directory that does not answer refuses the login
RECEIVE_TIMEOUT = 15


class VerifiedTls(ldap3.Tls):
    """ldap3's TLS with the standard library's checks: the chain against the CA file (or
    the public CAs) and the host name or IP address, in the handshake itself. (ldap3 turns
    the SSL context's host name check off and matches names afterwards, by code that
    cannot match an IP address on the Pythons without ssl.match_hostname.)"""

    def wrap_socket(self, connection, do_handshake=False):
        context = ssl.create_default_context(cafile=self.ca_certs_file)
        connection.socket = context.wrap_socket(
            connection.socket, server_hostname=connection.server.host,
            do_handshake_on_connect=do_handshake)


class LoginRefused(web.HTTPError):
    """403 with a message for the person at the login page (JupyterHub's error page)."""

    def __init__(self, message: str):
        super().__init__(403, "%s", message)
        self.message = message


class DirectoryUnavailable(web.HTTPError):
    """503: the directory did not answer as it should; the login is refused."""

    def __init__(self):
        super().__init__(503, "%s", "The login service does not answer just now; please "
                                    "try again in a minute, or tell the hub's admin.")


def hub_username(directory_name: str) -> str:
    """The hub user name of a directory account: its name in lowercase, if that is a valid
    gpuhub user name; else LoginRefused, saying why."""
    name = (directory_name or "").strip().lower()
    if not re.fullmatch(USERNAME_PATTERN, name):
        shown = directory_name if len(directory_name or "") <= 40 else directory_name[:40] + "…"
        raise LoginRefused(f"Your account name {shown!r} cannot be used on this hub: user "
                           f"names here are {USERNAME_RULE}. Ask the hub's admin.")
    return name


def hub_groups(names: Iterable[str]) -> list[str]:
    """The directory groups that can be hub groups (others are left out)."""
    return sorted({n for n in names if isinstance(n, str)
                   and re.fullmatch(GROUP_NAME_PATTERN, n)})


def hub_account(directory_name: str, groups: Iterable[str], allowed: set[str],
                admin_groups: set[str], admin_users: set[str]) -> dict:
    """JupyterHub's auth model for a directory account, or LoginRefused."""
    name = hub_username(directory_name)
    groups = hub_groups(groups)
    if EVERYONE not in allowed and not allowed.intersection(groups):
        raise LoginRefused(f"{name} is not in a group allowed on this hub "
                           f"({', '.join(sorted(allowed))}). Ask the hub's admin.")
    admin = name in admin_users or bool(admin_groups.intersection(groups))
    return {"name": name, "groups": groups, "admin": admin}


class LdapAuthenticator(LDAPAuthenticator):
    """ldapauthenticator's settings (server, TLS strategy, search base and account), with
    gpuhub's own connections (always verified TLS, timeouts), lookup, groups and names.

    One search account (or an anonymous search) finds the single entry whose
    ``user_attribute`` is the login name and that matches ``user_filter``, and the groups
    under ``group_search_base`` that list it; then the password is checked by binding as
    that entry. A locked account fails that bind (the directory's own policy).
    """

    ca_file = Unicode("", config=True, help="LDAP_CA_FILE in the hub; empty: public CAs.")
    user_filter = Unicode("", config=True, help="LDAP_USER_FILTER: entries must match it.")
    group_search_base = Unicode("", config=True, help="LDAP_GROUP_BASE.")
    allowed_hub_groups = Set(config=True, help="ALLOWED_GROUPS ({'*'}: everyone).")
    admin_hub_groups = Set(config=True, help="ADMIN_GROUPS.")

    async def authenticate(self, handler, data):
        login = (data.get("username") or "").strip()
        password = data.get("password") or ""
        # An empty password is an unauthenticated bind, which LDAP servers accept.
        if not login or not password.strip():
            return None
        try:
            found = await LOOKUPS.submit(self.look_up, login, password)
        except LDAPException as err:
            self.log.error("LDAP login of %r failed: the directory %s:%s answered %s: %s",
                           login, self.server_address, self.server_port,
                           type(err).__name__, err)
            raise DirectoryUnavailable() from None
        if found is None:
            return None
        name, groups = found
        return hub_account(name, groups, set(self.allowed_hub_groups),
                           set(self.admin_hub_groups), set(self.admin_users))

    def get_connection(self, userdn, password):
        """A connection bound as ``userdn`` (None: anonymous), or None if the bind is refused.

        TLS always (ldaps, or StartTLS before the bind), verified (VerifiedTls), and
        timeouts, so that a directory that hangs refuses the login instead of holding a
        thread of the pool.
        """
        if self.tls_strategy == TlsStrategy.insecure:
            raise LDAPException("LDAP without TLS is not offered")
        on_connect = self.tls_strategy == TlsStrategy.on_connect
        server = ldap3.Server(self.server_address, port=self.server_port, use_ssl=on_connect,
                              tls=VerifiedTls(validate=ssl.CERT_REQUIRED,
                                              ca_certs_file=self.ca_file or None),
                              connect_timeout=CONNECT_TIMEOUT)
        try:
            return ldap3.Connection(
                server, user=userdn, password=password, receive_timeout=RECEIVE_TIMEOUT,
                auto_bind=ldap3.AUTO_BIND_NO_TLS if on_connect else ldap3.AUTO_BIND_TLS_BEFORE_BIND)
        except LDAPBindError:
            return None

    def look_up(self, login: str, password: str) -> tuple[str, list[str]] | None:
        """In a pool thread: the entry's name and groups if ``password`` is its password."""
        search = self.get_connection(self.lookup_dn_search_user, self.lookup_dn_search_password)
        if search is None:
            raise LDAPException("the search account (LDAP_BIND_DN) could not bind")
        try:
            entry = self._find(search, login)
            if entry is None:
                return None
            name, dn = entry
            groups = self._groups(search, dn, name)
        finally:
            search.unbind()
        user = self.get_connection(dn, password)
        if user is None:
            self.log.warning("LDAP login of %r refused: wrong password, or the account is "
                             "locked", login)
            return None
        user.unbind()
        return name, groups

    def _find(self, conn, login: str) -> tuple[str, str] | None:
        attribute = self.user_attribute
        query = f"(&({attribute}={escape_filter_chars(login)}){self.user_filter})"
        conn.search(search_base=self.user_search_base, search_filter=query,
                    search_scope=ldap3.SUBTREE, attributes=[attribute])
        if len(conn.entries) != 1:
            self.log.warning("LDAP login of %r refused: %d entries under %s match %s",
                             login, len(conn.entries), self.user_search_base, query)
            return None
        entry = conn.entries[0]
        values = entry.entry_attributes_as_dict.get(attribute) or []
        if len(values) != 1:
            self.log.warning("LDAP login of %r refused: its entry %s has %d values of %s",
                             login, entry.entry_dn, len(values), attribute)
            return None
        return str(values[0]), entry.entry_dn

    def _groups(self, conn, dn: str, name: str) -> list[str]:
        if not self.group_search_base:
            return []
        query = (f"(|(member={escape_filter_chars(dn)})(uniqueMember={escape_filter_chars(dn)})"
                 f"(memberUid={escape_filter_chars(name)}))")
        conn.search(search_base=self.group_search_base, search_filter=query,
                    search_scope=ldap3.SUBTREE, attributes=["cn"])
        return [str(cn) for e in conn.entries for cn in e.entry_attributes_as_dict.get("cn", [])]


class OidcAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator, with gpuhub's names and a message for a refused group."""

    def user_info_to_username(self, user_info):
        name = super().user_info_to_username(user_info)
        return hub_username(name)
