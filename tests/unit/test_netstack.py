"""The real guest's echo check (avocado_vhost.peers.guest.netstack): each
transmit ring keeps its order, the rings between them need not."""

import unittest

from avocado_vhost.peers.guest.netstack import Responder
from avocado_vhost.vhost_user.net import Port


def seen(*echoes):
    """A responder that saw ``(seq, ring)`` echo requests, in order."""
    responder = Responder(Port(), lambda: None)
    for n, (seq, ring) in enumerate(echoes):
        responder.echo_seqs.append(seq)
        responder.echo_ip_ids.append(n)
        responder.echo_rings.append(ring)
    return responder


class EchoAnomalies(unittest.TestCase):

    def test_in_order_on_one_ring(self):
        self.assertEqual(seen((0, 1), (1, 1), (2, 1)).echo_anomalies(0, 3),
                         "")

    def test_two_rings_may_interleave(self):
        self.assertEqual(seen((1, 3), (0, 1), (2, 1)).echo_anomalies(0, 3),
                         "")

    def test_out_of_order_on_one_ring_is_found(self):
        self.assertEqual(seen((1, 1), (0, 1), (2, 3)).echo_anomalies(0, 3),
                         "out of order on ring 1: [1, 0]")

    def test_missing_and_doubled_are_found(self):
        found = seen((0, 1), (0, 1), (2, 1)).echo_anomalies(0, 3)
        self.assertIn("missing seq [1]", found)
        self.assertIn("seen twice: seq 0", found)


if __name__ == "__main__":
    unittest.main()
