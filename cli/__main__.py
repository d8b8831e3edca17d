"""`python -m cli ...` is the `musicedit` console script."""

import sys

from cli.main import main

sys.exit(main())
