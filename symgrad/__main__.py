"""`python -m symgrad ...`: see symgrad.cli."""

from symgrad.cli import main

raise SystemExit(main())
