"""Run the generator: ``python -m apalis_codegen [--check]`` (the same as ``apalis-codegen``)."""

import sys

from apalis_codegen.main import main

sys.exit(main(prog="python -m apalis_codegen"))
