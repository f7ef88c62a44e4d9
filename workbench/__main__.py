"""`python -m workbench ...` (what torchrun runs on every rank): the command line."""

import sys

from .cli import main

sys.exit(main())
