"""``python -m avocado_vhost``: see :mod:`avocado_vhost.cli`."""

import sys

from .cli import main

sys.exit(main())
