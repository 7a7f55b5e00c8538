"""What each of gpuhub's runtimes may import from outside the standard library, and no cycles.

    python -m tools.importborders [ROOT]

import-linter (``pyproject.toml``) checks the borders between gpuhub's own packages; this
checks the rest as an allow-list, so that a new import of anything a runtime's image (or the
admin's virtual environment) does not hold fails in lint, whatever its name. It follows
imports through gpuhub's own modules (the core's imports count for every runtime that uses
it) and includes imports made inside functions. It also refuses any import cycle between
gpuhub's modules. Exit 1 with one line per problem.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

# Top-level import names each runtime may reach, beyond the standard library. The core's
# are in every runtime's list, since they all import it.
CORE = {"yaml"}
ALLOWED = {
    "gpuhub.core": CORE,
    # The admin's host: requirements.txt (invoke, PyYAML).
    "gpuhub.tasks": CORE | {"invoke"},
    # The docker-proxy image: Debian's python3-aiohttp and python3-yaml.
    "gpuhub.broker": CORE | {"aiohttp", "yarl"},  # yarl: aiohttp's URLs (python3-yarl)
    # The lab-firewall image: python3-minimal.
    "gpuhub.labfirewall": set(),
    # From the hub image, but the sampler needs nothing of it.
    "gpuhub.sampler": CORE,
    # The hub image (jupyterhub/requirements.txt).
    # alembic: JupyterHub's own dependency (its migrations; gpuhub.services.hubdb).
    "gpuhub.services": CORE | {"alembic", "bcrypt", "docker", "jupyterhub", "nativeauthenticator",
                               "requests", "sqlalchemy"},
    # aiohttp: JupyterHub 6's own HTTP client (gpuhub.hub.jupyterhubfixes sets its resolver).
    "gpuhub.hub": CORE | {"aiohttp", "bcrypt", "docker", "dockerspawner", "jupyterhub", "ldap3",
                          "ldapauthenticator", "nativeauthenticator", "oauthenticator",
                          "prometheus_client", "requests", "sqlalchemy", "tornado",
                          "traitlets"},
}


def problems(graph) -> list[str]:
    found = []
    modules = sorted(m for m in graph.modules if m.startswith("gpuhub"))
    for runtime, allowed in ALLOWED.items():
        inside = [m for m in modules if m == runtime or m.startswith(runtime + ".")]
        reached = set(inside)
        for module in inside:
            reached |= graph.find_upstream_modules(module)
        for module in sorted(reached):
            top = module.split(".")[0]
            if top == "gpuhub" or top in sys.stdlib_module_names or top in allowed:
                continue
            importers = sorted(m for m in graph.find_modules_that_directly_import(module)
                               if m in reached)
            found.append(f"{runtime} reaches {module} (imported by {', '.join(importers)}), "
                         "which its runtime does not hold; see tools/importborders.py")
    for module in modules:
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith("gpuhub") and imported != module:
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                if chain:
                    found.append("import cycle: " + " -> ".join([module, *chain]))
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else ".").resolve()
    sys.path.insert(0, str(root))
    graph = grimp.build_graph("gpuhub", include_external_packages=True, cache_dir=None)
    found = problems(graph)
    for line in dict.fromkeys(found):  # a cycle is found from each of its modules
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
