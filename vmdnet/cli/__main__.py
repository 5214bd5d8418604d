"""python -m vmdnet.cli: the same as the vmdnetctl command."""

import sys

from vmdnet.cli.main import main

sys.exit(main())
