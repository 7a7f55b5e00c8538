"""``python3 -m gpuhub.broker``: serve the broker."""

from gpuhub.broker.server import main

raise SystemExit(main())
