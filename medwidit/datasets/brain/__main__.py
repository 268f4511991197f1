"""``python -m medwidit.datasets.brain build|lists|examples|atlas|info``."""

from .sources import main

raise SystemExit(main())
