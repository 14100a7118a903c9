"""`python -m pinproxy` is `pinproxy`."""

import sys

from pinproxy.cli import main

sys.exit(main())
