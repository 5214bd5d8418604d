"""python -m vmdnet.daemon: the same as the vmdnetd command."""

import sys

from vmdnet.daemon.main import main

sys.exit(main())
