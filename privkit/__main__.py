import sys

from privkit.cli import main

sys.exit(main())
