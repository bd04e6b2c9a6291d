"""Entry point of `python3 -m bench`."""

from bench.cli import main

raise SystemExit(main())
