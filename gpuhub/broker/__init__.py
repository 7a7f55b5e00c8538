"""The Docker broker (the docker-proxy image): ``python3 -m gpuhub.broker``.

Its image holds Debian's aiohttp and PyYAML, the core and this package only.
"""
