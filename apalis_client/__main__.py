"""Allow ``python -m apalis_client``."""

import sys

from apalis_client.cli import main

sys.exit(main())
