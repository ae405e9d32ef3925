import sys

from edgedfl.cli import main

sys.exit(main())
