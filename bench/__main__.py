"""`python -m bench`: run every scenario and print the table (see bench/run.py and bench/README.md)."""

import sys

from bench.run import main

sys.exit(main())
