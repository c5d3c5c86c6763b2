"""`python -m twoway_fast ...`: the command line of twoway_fast.cli."""
import sys

from .cli import main

sys.exit(main())
