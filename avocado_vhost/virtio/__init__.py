"""
Virtio's own vocabulary, written once: feature bits, ring layouts and
flags, the net header.

The back-end (:mod:`avocado_vhost.vhost_user`), the test-side driver
(:mod:`avocado_vhost.peers.qemu`) and the tests all speak virtio; each used to
spell these numbers itself.  Nothing here does I/O or keeps state, so any
layer may import it.

* :mod:`.features` -- device-independent and virtio-net feature bits;
* :mod:`.ring` -- split and packed ring layouts and their flag bits;
* :mod:`.net` -- the virtio-net header.
"""

from .features import VirtioFeature, feature_names
from .net import NET_HDR_LEN, net_header
from .ring import (AVAIL_F_NO_INTERRUPT, DESC, DESC_F_INDIRECT, DESC_F_NEXT,
                   DESC_F_WRITE, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED,
                   PACKED_EVENT_DISABLE, USED_ELEM, USED_F_NO_NOTIFY)

__all__ = ["VirtioFeature", "feature_names", "NET_HDR_LEN", "net_header",
           "DESC", "USED_ELEM", "DESC_F_NEXT", "DESC_F_WRITE",
           "DESC_F_INDIRECT", "AVAIL_F_NO_INTERRUPT", "USED_F_NO_NOTIFY",
           "PACKED_DESC_F_AVAIL", "PACKED_DESC_F_USED",
           "PACKED_EVENT_DISABLE"]
