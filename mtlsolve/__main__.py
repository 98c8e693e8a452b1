import sys

from mtlsolve.cli import main

sys.exit(main())
