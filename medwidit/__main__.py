"""``python -m medwidit ...`` is the ``medwidit`` command."""

import sys

from medwidit.cli import main

if __name__ == "__main__":
    sys.exit(main())
