"""``python -m medwidit.datasets.brain build|lists|examples|info``."""

from .sources import main

raise SystemExit(main())
