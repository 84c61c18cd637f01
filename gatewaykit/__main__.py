"""C{python -m gatewaykit}: the same as the C{gatewaykit} console script."""

from gatewaykit.cli import main

raise SystemExit(main())
