"""
Shared objects (SHARED_OBJECT, QEMU 8.2+): back-ends share dma-bufs
through QEMU's virtio-dmabuf table.

Two vhost-user net devices in one VM, each with its own back-end.  The
exporter adds a UUID to the table (SHARED_OBJECT_ADD on its back-end
channel); the importer looks it up (SHARED_OBJECT_LOOKUP); QEMU fetches
the object from the exporter (GET_SHARED_OBJECT on the exporter's socket)
and, in the spec's words, "will reply passing the fd and a zero".  Only
the owner may remove an entry; a lookup of an entry removed fails.

Two open QEMU defects since the feature came (1609476662, 8.2), each the
known-defect report of one test on every QEMU that has shared objects:
GET_SHARED_OBJECT goes out without its UUID (the message's size is never
set, so only the header is sent), and the answer to a lookup never carries
the fd: ``vhost_user_backend_handle_shared_object_lookup`` attaches it to
the importer's *main* socket (``qemu_chr_fe_set_msgfds``), answers on the
back-end channel without it, and the next write on the main socket
replaces it -- the importer never gets the object and QEMU keeps one fd
per lookup.
"""

import os
import uuid
from dataclasses import replace

from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import (BackendConfig, BackendRequest,
                                      ProtocolFeature, Request)
from avocado_vhost.vhost_user.connection import close_fds
from avocado_vhost.vhost_user.message import SharedObject

OBJECT = uuid.UUID("6d2f1e9c-4a57-4b0e-9b35-1c1a8f7f3e21").bytes
CONTENT = b"a dma-buf, as far as QEMU can tell"
LOOKUPS = 5


class SharedObjects(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,backend-channel
    """

    def setUp(self):
        super().setUp()
        self.require_qemu((8, 2, 0), "shared objects came with 1609476662")

    def start(self, lenient=False):
        """The VM with both devices; ``lenient``: the exporter answers a
        GET_SHARED_OBJECT that names no object with its only one."""
        config = BackendConfig()
        config.protocol_features |= int(
            ProtocolFeature.SHARED_OBJECT | ProtocolFeature.BACKEND_REQ
            | ProtocolFeature.REPLY_ACK)
        exporting = replace(config, shared_objects={OBJECT: CONTENT},
                            answer_unnamed_lookup=lenient)
        self.exporter = self.make_backend("exporter", exporting)
        self.importer = self.make_backend("importer", config)
        # the importer's device first: the test's driver starts that one
        second = [
            "-chardev", f"socket,id=vu1,path={self.exporter.listener_path}",
            "-netdev", "vhost-user,id=net1,chardev=vu1,vhostforce=on",
            "-device", "virtio-net-pci,netdev=net1,disable-legacy=on,"
            "romfile="]
        self.vm = self.make_vm("vm", self.importer.listener_path,
                               extra=second)
        self.vm.launch()
        for backend in (self.exporter, self.importer):
            backend.wait_request(Request.SET_BACKEND_REQ_FD,
                                 timeout=self.scaled(10))

    def ask(self, backend, request, fds=None):
        return backend.backend_request(request, SharedObject(OBJECT),
                                       reply_fds=fds)

    def test_only_the_owner_removes_an_object(self):
        """The exporter adds the UUID; the importer may not remove it, the
        exporter may; a lookup afterwards fails, with no fd."""
        self.start()
        self.assertEqual(self.ask(self.exporter,
                                  BackendRequest.SHARED_OBJECT_ADD), 0)
        self.assertNotEqual(self.ask(self.importer,
                                     BackendRequest.SHARED_OBJECT_REMOVE), 0,
                            "QEMU let a back-end remove another's object")
        self.assertEqual(self.ask(self.exporter,
                                  BackendRequest.SHARED_OBJECT_REMOVE), 0)
        fds = []
        self.assertNotEqual(self.ask(self.importer,
                                     BackendRequest.SHARED_OBJECT_LOOKUP,
                                     fds), 0)
        self.assertEqual(fds, [])
        self.assertNotIn(Request.GET_SHARED_OBJECT,
                         self.exporter.trace.received())
        self.check_backends(self.exporter, self.importer)

    def test_qemu_asks_the_exporter_for_the_object_by_its_uuid(self):
        """The importer's lookup makes QEMU ask the exporter for the
        object: GET_SHARED_OBJECT, whose payload is the UUID."""
        self.start()
        self.assertEqual(self.ask(self.exporter,
                                  BackendRequest.SHARED_OBJECT_ADD), 0)
        self.ask(self.importer, BackendRequest.SHARED_OBJECT_LOOKUP, [])
        asked = self.exporter.trace.payloads(Request.GET_SHARED_OBJECT)
        self.assertEqual(len(asked), 1, "QEMU never asked the exporter")
        self.assertEqual(asked[0].uuid, OBJECT, "; ".join(
            v.text for v in self.exporter.violations))

    def test_a_lookup_brings_the_exporters_object(self):
        """With an exporter that answers whatever QEMU asks, QEMU's answer
        on the importer's channel is 0 and carries the object's fd.

        :avocado: tags=quick
        """
        self.start(lenient=True)
        self.expect_violations(self.exporter)  # the other defect, judged above
        self.assertEqual(self.ask(self.exporter,
                                  BackendRequest.SHARED_OBJECT_ADD), 0)
        pid = self.vm.machine.get_pid()
        open_before = len(os.listdir(f"/proc/{pid}/fd"))
        fds = []
        try:
            for _ in range(LOOKUPS):
                self.assertEqual(self.ask(
                    self.importer, BackendRequest.SHARED_OBJECT_LOOKUP, fds),
                    0)
            if len(fds) != LOOKUPS:
                leaked = len(os.listdir(f"/proc/{pid}/fd")) - open_before
                self.fail(f"QEMU answered SHARED_OBJECT_LOOKUP without the "
                          f"object's fd {LOOKUPS - len(fds)} times in "
                          f"{LOOKUPS} (vhost-user: \"Frontend will reply "
                          f"passing the fd and a zero\"); QEMU holds "
                          f"{leaked} more fds than before the lookups")
            self.assertEqual(os.pread(fds[0], len(CONTENT), 0), CONTENT)
        finally:
            close_fds(fds)
        self.check_backends(self.importer)

if __name__ == "__main__":
    main()
