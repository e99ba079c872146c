"""Run the generator: ``python -m codegen [--check]``."""

import sys

from apalis_codegen.main import main

sys.exit(main())
