import sys

from adl.cli import main

sys.exit(main())
