"""The gpu-sampler service: ``python3 -m gpuhub.sampler``. Imports the core only."""
