"""AUTHENTICATOR=native|ldap|oidc: the settings, the hub's config, the compose file and
the tasks that manage native accounts, without a hub. (The LDAP authenticator itself is
tested against a real slapd in test_directory_ldap.py.)"""

from __future__ import annotations

import pytest
import yaml
from invoke import Context, Exit
from traitlets.config import Config

from gpuhub.core import names
from gpuhub.core.authconfig import discover_oidc as discover
from gpuhub.core.settings import SettingsError, validate
from gpuhub.hub import hubconfig
from gpuhub.tasks import project as project_mod
from gpuhub.tasks import users
from harness import ROOT

LDAP = {"AUTHENTICATOR": "ldap", "LDAP_URL": "ldaps://ldap.example.org",
        "LDAP_USER_BASE": "ou=people,dc=example,dc=org", "ALLOWED_GROUPS": "gpu-users"}
OIDC = {"AUTHENTICATOR": "oidc", "OIDC_ISSUER": "https://login.example.org/realms/lab",
        "OIDC_CLIENT_ID": "gpuhub", "OIDC_CLIENT_SECRET_FILE": "/etc/gpuhub/oidc-secret",
        "ALLOWED_GROUPS": "gpu-users"}
ENDPOINTS = {"authorization_endpoint": "https://login.example.org/auth",
             "token_endpoint": "https://login.example.org/token",
             "userinfo_endpoint": "https://login.example.org/me"}


def problems(**settings) -> str:
    with pytest.raises(SettingsError) as err:
        validate(settings)
    return str(err.value)


def test_native_is_the_default_and_keeps_the_admin_account():
    settings = validate({})
    assert settings.authenticator == "native" and settings.admin_users == ("admin",)


def test_a_directory_makes_no_admin_by_the_default_name_only_those_named():
    ldap = {**LDAP, "ALLOWED_GROUPS": "*"}
    assert validate(ldap).admin_users == ()
    assert validate({**ldap, "ADMIN_USERS": "boss"}).admin_users == ("boss",)


@pytest.mark.parametrize(("given", "says"), [
    ({"AUTHENTICATOR": "kerberos"}, "AUTHENTICATOR='kerberos' in the settings: must be native"),
    ({**LDAP, "LDAP_URL": ""}, "needs LDAP_URL, e.g. LDAP_URL=ldaps://ldap.example.org"),
    ({**LDAP, "ALLOWED_GROUPS": ""}, "needs ALLOWED_GROUPS, e.g. ALLOWED_GROUPS=gpu-users (or *"),
    ({**LDAP, "LDAP_URL": "http://ldap.example.org"}, "must be ldaps://host[:port]"),
    ({**LDAP, "LDAP_URL": "ldap://ldap.example.org:99999"}, "must be ldaps://host[:port]"),
    ({**LDAP, "LDAP_URL": "ldaps://ldap.example.org/dc=x?uid"}, "must be ldaps://host[:port]"),
    ({**LDAP, "LDAP_USER_FILTER": "(uid=a))(|(uid=*)"}, "must be one LDAP filter in parentheses"),
    ({**LDAP, "LDAP_USER_FILTER": "uid=a"}, "must be one LDAP filter in parentheses"),
    ({**LDAP, "LDAP_USER_ATTRIBUTE": "uid)(x"}, "must be an attribute name such as uid"),
    ({**LDAP, "LDAP_BIND_DN": "cn=search,dc=example,dc=org"},
     "set LDAP_BIND_DN and LDAP_BIND_PASSWORD_FILE together"),
    (LDAP, "need LDAP_GROUP_BASE (where the groups are)"),
    ({**LDAP, "ALLOWED_GROUPS": "*", "GPU_LIMITS": "@students=1"}, "need LDAP_GROUP_BASE"),
    ({**LDAP, "ALLOWED_GROUPS": "*,staff"}, "* (everyone) stands alone"),
    ({**LDAP, "ALLOWED_GROUPS": "gpu(users)"}, "'gpu(users)' is not a group name"),
    ({**LDAP, "OIDC_CLIENT_ID": "gpuhub"}, "OIDC_CLIENT_ID='gpuhub' in the settings is not used "
                                           "with AUTHENTICATOR='ldap'"),
    ({"LDAP_URL": "ldaps://x.org"}, "LDAP_URL='ldaps://x.org' in the settings is not used with "
                                    "AUTHENTICATOR='native'"),
    ({**OIDC, "OIDC_ISSUER": "http://login.example.org"}, "must be the provider's https:// issuer"),
    ({**OIDC, "OIDC_CLIENT_SECRET_FILE": ""}, "needs OIDC_CLIENT_SECRET_FILE"),
    ({**OIDC, "OIDC_SCOPES": "profile email"}, "scopes that include openid"),
])
def test_bad_login_settings_say_which_and_how_to_fix_them(given, says):
    assert says in problems(**given)


def test_settings_survive_the_trip_through_the_environment():
    """The reclaimer service validates the hub's settings again from raw_env()."""
    settings = validate({**OIDC, "OIDC_SCOPES": "openid  email groups", "ADMIN_GROUPS": "lab admins"})
    again = validate(settings.raw_env())
    assert again.values == settings.values and again.oidc_scopes == "openid email groups"


def ldap_config(tmp_path, **extra) -> Config:
    (tmp_path / names.LDAP_BIND_PASSWORD_SECRET).write_text("s3cret-bind\n")
    c = Config()
    hubconfig.update_auth(c, validate({**LDAP, "LDAP_GROUP_BASE": "ou=groups,dc=example,dc=org",
                                       **extra}), tmp_path)
    return c


def test_ldap_config_always_tls_and_the_groups_managed_by_the_hub(tmp_path):
    c = ldap_config(tmp_path)
    assert c.JupyterHub.authenticator_class == "gpuhub.hub.directory.LdapAuthenticator"
    assert (c.LDAPAuthenticator.server_address, c.LDAPAuthenticator.server_port,
            c.LDAPAuthenticator.tls_strategy) == ("ldap.example.org", 636, "on_connect")
    assert c.LdapAuthenticator.ca_file == ""  # the image's public CAs
    assert c.Authenticator.manage_groups is True
    assert c.LdapAuthenticator.allowed_hub_groups == {"gpu-users"}
    assert "lookup_dn_search_password" not in c.LDAPAuthenticator  # anonymous search
    starttls = ldap_config(tmp_path, LDAP_URL="ldap://ldap.example.org",
                           LDAP_CA_FILE="./ca.pem", LDAP_BIND_DN="cn=search,dc=example,dc=org",
                           LDAP_BIND_PASSWORD_FILE="/etc/gpuhub/bind")
    assert (starttls.LDAPAuthenticator.server_port,
            starttls.LDAPAuthenticator.tls_strategy) == (389, "before_bind")
    assert starttls.LdapAuthenticator.ca_file == str(tmp_path / names.LDAP_CA_SECRET)
    # The password comes from the secret file, not from the settings or the environment.
    assert starttls.LDAPAuthenticator.lookup_dn_search_password == "s3cret-bind"


def test_a_missing_secret_file_stops_the_hub_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="OIDC client secret .* is missing or empty"):
        hubconfig.update_auth(Config(), validate(OIDC), tmp_path, discover=lambda *_: ENDPOINTS)


def test_oidc_config_from_discovery_and_groups_from_the_claim(tmp_path):
    (tmp_path / names.OIDC_CLIENT_SECRET_SECRET).write_text("client-s3cret\n")
    asked = []
    c = Config()
    hubconfig.update_auth(c, validate({**OIDC, "ADMIN_GROUPS": "lab-admins"}), tmp_path,
                          discover=lambda issuer, ca: asked.append((issuer, ca)) or ENDPOINTS)
    assert asked == [("https://login.example.org/realms/lab", None)]
    g = c.GenericOAuthenticator
    assert (g.authorize_url, g.token_url, g.userdata_url) == tuple(ENDPOINTS.values())
    assert g.client_secret == "client-s3cret" and g.validate_server_cert is True
    assert g.scope == ["openid", "profile", "email", "groups"]
    assert g.allowed_groups == {"gpu-users"} and g.allow_all is False
    assert g.admin_groups == {"lab-admins"} and g.manage_groups is True
    assert g.auth_state_groups_key == "oauth_user.groups"


def test_discovery_refuses_a_provider_that_is_not_the_issuer(monkeypatch):
    class Answer:
        def __init__(self, body):
            self.body = body

        def read(self, _limit):
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

    for body, says in [(b'{"issuer": "https://evil.example.org"}', "calls itself"),
                       (b"not json", "could not read"),
                       (b'{"issuer": "https://login.example.org", "authorization_endpoint": '
                        b'"http://login.example.org/auth"}', "no https authorization_endpoint")]:
        monkeypatch.setattr("urllib.request.urlopen", lambda *a, body=body, **k: Answer(body))
        with pytest.raises(ValueError, match=says):
            discover("https://login.example.org", None)


def test_compose_adds_the_directory_network_and_secret_files(env_file):
    env_file(**LDAP, LDAP_GROUP_BASE="ou=groups,dc=example,dc=org")
    assert project_mod.load().compose_files[-1] == "docker-compose.login.yml"
    login = yaml.safe_load((ROOT / "docker-compose.login.yml").read_text())
    assert login["networks"]["directory"]["name"] == names.directory_network(
        "${COMPOSE_PROJECT_NAME:-gpuhub}")
    assert set(login["services"]["hub"]["secrets"]) == {
        names.LDAP_BIND_PASSWORD_SECRET, names.LDAP_CA_SECRET, names.OIDC_CLIENT_SECRET_SECRET,
        names.OIDC_CA_SECRET} == set(login["secrets"])
    assert set(login["services"]["hub"]["environment"]) == {"GPUHUB_LOGIN_FILES"}  # no secret
    env_file()
    assert "docker-compose.login.yml" not in project_mod.load().compose_files


@pytest.mark.parametrize("task", ["adduser", "passwd"])
def test_account_tasks_refuse_with_a_directory_and_say_where_accounts_live(env_file, task):
    env_file(**LDAP, LDAP_GROUP_BASE="ou=groups,dc=example,dc=org")
    with pytest.raises(Exit) as refused:
        getattr(users, task)(Context(), "bob")
    message = str(refused.value.message)
    assert message.startswith("error: AUTHENTICATOR=ldap: accounts and passwords live in the "
                              "directory (ldaps://ldap.example.org)")
    assert "\n" not in message


def test_up_checks_the_login_files_before_docker_and_stamps_them_without_content(env_file, tmp_path):
    from gpuhub.tasks import login

    secret = tmp_path / "bind"
    env_file(**LDAP, LDAP_GROUP_BASE="ou=groups,dc=x", LDAP_BIND_DN="cn=s,dc=x",
             LDAP_BIND_PASSWORD_FILE=str(secret))
    with pytest.raises(Exit, match=f"LDAP_BIND_PASSWORD_FILE='{secret}': there is no file"):
        login.check_files(project_mod.load())
    secret.write_text("")
    with pytest.raises(Exit, match="is empty; put the secret in it"):
        login.check_files(project_mod.load())
    secret.write_text("hunter2-bind\n")
    secret.chmod(0o600)
    login.check_files(project_mod.load())
    stamp = login.files_stamp(project_mod.load())
    assert stamp and "hunter2" not in stamp
    secret.unlink()
    secret.write_text("rotated-bind\n")  # a new file: a new stamp, so a new hub
    assert login.files_stamp(project_mod.load()) != stamp
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    env_file(**LDAP, LDAP_GROUP_BASE="ou=groups,dc=x", LDAP_CA_FILE=str(ca))
    with pytest.raises(Exit, match="holds no PEM certificate"):
        login.check_files(project_mod.load())


def test_swarm_mode_hands_the_hub_the_login_files_as_swarm_secrets(tmp_path):
    from gpuhub.core import swarm

    token, secret, ca = tmp_path / "token", tmp_path / "client-secret", tmp_path / "ca.pem"
    token.write_text("t0k3n\n")
    secret.write_text("client-s3cret\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = validate({**OIDC, "MODE": "swarm", "REGISTRY": "r.example.org",
                         "SWARM_HOMES": "/srv/homes", "COMPOSE_PROJECT_NAME": "lab1",
                         "OIDC_CLIENT_SECRET_FILE": str(secret), "OIDC_CA_FILE": str(ca)})
    spec = swarm.stack_spec(settings, profiles_path=tmp_path / "p.yaml", config_d=tmp_path, secret_file=token,
                            metrics_secret_file=token, inventory_json="[]",
                            login_files={names.OIDC_CLIENT_SECRET_SECRET: secret,
                                         names.OIDC_CA_SECRET: ca})
    hub = spec["services"]["hub"]
    assert {"source": names.OIDC_CLIENT_SECRET_SECRET,
            "target": names.OIDC_CLIENT_SECRET_SECRET} in hub["secrets"]
    assert spec["secrets"][names.OIDC_CA_SECRET]["file"] == str(ca)
    name = spec["secrets"][names.OIDC_CLIENT_SECRET_SECRET]["name"]
    assert name.startswith("lab1-oidc-client-secret-")
    assert "client-s3cret" not in swarm.stack_yaml(spec)
    secret.write_text("rotated-s3cret\n")  # Swarm secrets are immutable: a new name
    again = swarm.stack_spec(settings, profiles_path=tmp_path / "p.yaml", config_d=tmp_path, secret_file=token,
                             metrics_secret_file=token, inventory_json="[]",
                             login_files={names.OIDC_CLIENT_SECRET_SECRET: secret})
    assert again["secrets"][names.OIDC_CLIENT_SECRET_SECRET]["name"] != name


def test_swarm_deploy_takes_the_login_files_the_settings_name(env_file, tmp_path):
    from gpuhub.tasks import swarmstack

    secret = tmp_path / "bind"
    env_file(**LDAP, LDAP_GROUP_BASE="ou=groups,dc=x", LDAP_BIND_DN="cn=s,dc=x",
             LDAP_BIND_PASSWORD_FILE=str(secret), MODE="swarm", REGISTRY="r.example.org",
             SWARM_HOMES="/srv/homes")
    assert swarmstack.login_secret_files(project_mod.load()) == {
        names.LDAP_BIND_PASSWORD_SECRET: secret}
