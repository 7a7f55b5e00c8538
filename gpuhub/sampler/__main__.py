"""``python3 -m gpuhub.sampler``: sample the GPUs at a fixed interval."""

from gpuhub.sampler.service import main

main()
