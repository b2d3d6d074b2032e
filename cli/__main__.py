"""``python -m cli`` runs the ``ferry`` command (what the console script calls)."""

import sys

from cli.main import main

sys.exit(main())
