"""Shared pieces of the unit tests: a back-end on a socketpair, memfds, fd
counting."""

import os
import unittest

from avocado_vhost.vhost_user import BackendConfig, VhostUserBackend
from avocado_vhost.vhost_user.frontend import FrontEnd
from avocado_vhost.vhost_user.message import (MemoryRegion, ProtocolFeature,
                                              Request, U64, VirtioFeature)

ALL_PROTOCOL = (ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD
                | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG
                | ProtocolFeature.CONFIGURE_MEM_SLOTS
                | ProtocolFeature.STATUS | ProtocolFeature.RESET_DEVICE
                | ProtocolFeature.INFLIGHT_SHMFD | ProtocolFeature.RARP
                | ProtocolFeature.NET_MTU | ProtocolFeature.BACKEND_REQ
                | ProtocolFeature.CROSS_ENDIAN
                | ProtocolFeature.INBAND_NOTIFICATIONS)


def open_fds():
    """The set of fds open in this process now."""
    return set(os.listdir("/proc/self/fd"))


def memfd(size, name="guest"):
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    return fd


class BackendTestCase(unittest.TestCase):
    """Each test gets a running back-end and a front-end facing it."""

    config = None

    def setUp(self):
        self.fds_before = open_fds()
        self.backend = VhostUserBackend(
            "unit", self.config or BackendConfig(
                protocol_features=int(ALL_PROTOCOL), max_rings=8,
                config=bytes(range(64))))
        self.backend.start()
        self.fe = self.connect()

    def connect(self):
        fe, conn = FrontEnd.pair()
        self.backend.adopt(conn)
        return fe

    def tearDown(self):
        self.fe.close()
        self.backend.stop()
        leaked = open_fds() - self.fds_before
        # listdir's own fd may show up; anything else is a leak.
        leaked = {fd for fd in leaked
                  if os.path.exists(f"/proc/self/fd/{fd}")}
        self.assertFalse(leaked, f"fds leaked: {leaked}")

    def negotiate(self, features=None, protocol=ALL_PROTOCOL):
        """The prefix of QEMU's start-up sequence."""
        fe = self.fe
        fe.call(Request.GET_FEATURES)
        fe.call(Request.GET_PROTOCOL_FEATURES)
        fe.send(Request.SET_PROTOCOL_FEATURES, U64(int(protocol)))
        fe.send(Request.SET_OWNER)
        if features is None:
            features = (VirtioFeature.VERSION_1
                        | VirtioFeature.PROTOCOL_FEATURES)
        fe.send(Request.SET_FEATURES, U64(int(features)))
        self.sync()

    def sync(self):
        """A GET_FEATURES round trip: everything before it is handled."""
        self.fe.call(Request.GET_FEATURES)

    def rules(self):
        """The rules the front-end broke so far, in order."""
        return [v.rule for v in self.backend.violations]

    def mem_table(self, size=1 << 20, gpa=0, uva=0x7F0000000000):
        from avocado_vhost.vhost_user.message import MemoryTable
        fd = memfd(size)
        try:
            self.fe.send(Request.SET_MEM_TABLE, MemoryTable(
                (MemoryRegion(gpa, size, uva, 0),)), fds=[fd])
        finally:
            os.close(fd)
        self.sync()
