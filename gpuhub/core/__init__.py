"""gpuhub's shared core: what every runtime may import.

Settings, names, labels, profiles, the GPU allocator and inventory, versions, the usage
records, the sampler's file format. Imports only the standard library and PyYAML, and
none of gpuhub's runtimes (checked by the import contracts in ``pyproject.toml``).
"""
