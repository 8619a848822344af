"""`python -m pipeline.cli`: the patrol command."""
import sys

from pipeline.cli import main

sys.exit(main())
