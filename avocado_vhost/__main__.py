"""``python -m avocado_vhost``: see :mod:`avocado_vhost.cli`."""

import sys

from avocado_vhost.cli import main

sys.exit(main())
