"""``python -m filtag_kg`` runs the ``filtag-kg`` command line."""

import sys

from .cli import main

sys.exit(main())
