"""
A hostile vhost-user front-end for back-end authors.

It connects to any back-end and drives it with seeded moves -- plausible
requests with fields at and past every boundary, malformed messages, rings
full of garbage in the memory it shares, replies on the back-end channel
that are not what the back-end asked for -- and watches the process: a
crash, a hang, a socket that stops accepting, memory or fds that grow.  A
failing run is cut down to a short reproducer file that plays again.

::

    step      a move as plain data; reproducer files
    generate  seeded moves (the same seed, the same moves)
    wire      one connection: moves to bytes and fds; the liveness probe
    target    the back-end process: start, restart, end, memory, fds
    minimise  delta debugging over steps
    campaign  the run: budget, outcomes, findings, replay
    command   ``python -m avocado_vhost fuzz``
"""

from avocado_vhost.fuzz.campaign import Budget, Finding, Report, replay, run
from avocado_vhost.fuzz.step import Step, load
from avocado_vhost.fuzz.target import Target, TargetError

__all__ = ["Budget", "Finding", "Report", "Step", "Target", "TargetError",
           "load", "replay", "run"]
