"""
Crypto sessions (CRYPTO_SESSION): a virtio-crypto device whose back-end is
``cryptodev-vhost-user``.

The guest (the test's driver) creates an AES-CBC cipher session on the
device's control queue; QEMU handles the control queue itself and asks the
back-end for the session (CREATE_CRYPTO_SESSION, QEMU's own
VhostUserCryptoSession), and the guest gets the id the back-end assigned.
Destroying the session reaches the back-end as CLOSE_CRYPTO_SESSION of that
id.  The claims: the guest's key travels to the back-end, the id travels
back to the guest, the same id is closed, and both requests report OK.

QEMU sends its own session structure as the payload, pointers included
(``CryptoDevBackendSymSessionInfo``'s ``cipher_key`` and ``auth_key``,
since efbfeb8180): the back-end learns addresses of QEMU's heap, which
address-space randomisation is there to hide from another process.
``test_no_qemu_address_reaches_the_back_end`` looks for any 8-byte value
in the request that falls inside QEMU's own mappings (``/proc/PID/maps``)
-- an open defect.  (The layout itself changed in 8.1, 5c33f9783a, with
nothing negotiated: the session id moved from the first to the last 8
bytes; the back-end tells the two apart by size.)
"""

import struct

from avocado_vhost.vhost_user.device_offers import BASE_FEATURES
from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, ProtocolFeature, Request

#: virtio-crypto (virtio 1.2, 5.9): opcodes, algorithms, status
CIPHER_CREATE_SESSION = 0x02
CIPHER_DESTROY_SESSION = 0x03
CIPHER_AES_CBC = 3
OP_ENCRYPT = 1
SYM_OP_CIPHER = 1
STATUS_OK = 0
KEY = bytes(range(16))


def create_request():
    """virtio_crypto_op_ctrl_req for an AES-CBC encryption session: the
    16-byte header, then the 56-byte sym_create_session."""
    header = struct.pack("<IIII", CIPHER_CREATE_SESSION, CIPHER_AES_CBC, 0, 0)
    para = struct.pack("<IIII", CIPHER_AES_CBC, len(KEY), OP_ENCRYPT, 0)
    return header + para + bytes(32) + struct.pack("<II", SYM_OP_CIPHER, 0)


def destroy_request(session):
    header = struct.pack("<IIII", CIPHER_DESTROY_SESSION, CIPHER_AES_CBC,
                         0, 0)
    return header + struct.pack("<Q", session) + bytes(48)


def qemu_mappings(pid):
    """The address ranges of process ``pid``."""
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
        for line in maps:
            start, end = line.split()[0].split("-")
            yield int(start, 16), int(end, 16)


class CryptoSessions(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,devices,crypto
    """

    def setUp(self):
        super().setUp()
        self.require_device("virtio-crypto-pci")
        if not self.caps.has_object("cryptodev-vhost-user"):
            self.cancel(f"{self.qemu_bin} has no 'cryptodev-vhost-user'")
        config = BackendConfig(
            features=BASE_FEATURES, max_rings=1,
            protocol_features=int(ProtocolFeature.REPLY_ACK
                                  | ProtocolFeature.CRYPTO_SESSION))
        self.backend = self.make_backend("backend", config)
        self.vm = self.make_vm("vm", self.backend.listener_path,
                               device="virtio-crypto-pci")
        self.vm.launch()
        self.vm.drive_device(queues=2)  # the data queue, then control
        self.ctrl = self.vm.net_queues()[1]

    def create_session(self):
        """The guest's request; QEMU serves the control queue within the
        driver's kick.  The session id and status the guest got."""
        descs = self.ctrl.post_chain([create_request(), KEY], [16])
        self.assertEqual([h for h, _ in self.ctrl.reap()], [descs[0]],
                         "QEMU did not answer the session request")
        session, status = struct.unpack(
            "<QI", self.ctrl.read_buffer(descs[-1], 12))
        return session, status

    def test_no_qemu_address_reaches_the_back_end(self):
        """Nothing in CREATE_CRYPTO_SESSION is an address inside QEMU's
        own mappings."""
        self.create_session()
        data = self.backend.trace.payloads(
            Request.CREATE_CRYPTO_SESSION)[0].data
        ranges = list(qemu_mappings(self.vm.machine.get_pid()))
        leaked = [(offset, value) for offset in range(0, len(data) - 7, 8)
                  for value in struct.unpack_from("<Q", data, offset)
                  if any(lo <= value < hi for lo, hi in ranges)]
        self.assertEqual(leaked, [], "CREATE_CRYPTO_SESSION hands the "
                         "back-end addresses of QEMU's own memory (offset, "
                         f"value): {[(o, hex(v)) for o, v in leaked]}")

    def test_a_session_is_created_and_closed_through_the_back_end(self):
        """A session the guest's driver creates reaches the back-end
        (CREATE_CRYPTO_SESSION) with its key, the guest gets the id the
        back-end assigned, and closing it reaches the back-end too
        (CLOSE_CRYPTO_SESSION).

        :avocado: tags=quick
        """
        backend, ctrl = self.backend, self.ctrl
        session, status = self.create_session()
        asked = backend.trace.payloads(Request.CREATE_CRYPTO_SESSION)
        self.assertEqual(len(asked), 1, "the back-end was never asked")
        self.assertIn(KEY, asked[0].data, "the guest's key did not travel")
        self.assertEqual(status, STATUS_OK)
        self.assertEqual(session, 1, "the guest did not get the id the "
                         "back-end assigned")

        descs = ctrl.post_chain([destroy_request(session)], [1])
        self.assertEqual([h for h, _ in ctrl.reap()], [descs[0]])
        self.assertEqual(ctrl.read_buffer(descs[-1], 1)[0], STATUS_OK)
        backend.wait_request(Request.CLOSE_CRYPTO_SESSION,
                             timeout=self.scaled(5))
        closed = backend.trace.payloads(Request.CLOSE_CRYPTO_SESSION)
        self.assertEqual([p.value for p in closed], [session])
        self.assertEqual(backend.state.crypto_sessions, {})
        self.check_backends(backend)


if __name__ == "__main__":
    main()
