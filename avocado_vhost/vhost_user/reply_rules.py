"""
The rules the proxy judges by itself, by identifier: the back-end's
replies and its channel, and the framing of either side.  The front-end's
requests are judged by the session's rules
(:data:`.conformance.FRONT_END_RULES`).  Every violation names one of these
in its ``rule``; an allow-list entry names one to accept it.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["REPLY_RULES"]

#: identifier -> what the rule says
REPLY_RULES: Dict[str, str] = {
    "reply-owed": "a reply answers a request that expects one (REPLY_BODY, "
                  "or NEED_REPLY with REPLY_ACK), and only such a request",
    "reply-payload": "a reply carries its request's payload type",
    "reply-names-request": "a reply names the request it answers",
    "reply-flag": "a reply has the REPLY flag set",
    "reply-version": "a reply has the version bits 1",
    "vring-base-of-the-ring-asked": "GET_VRING_BASE's reply names the "
                                    "ring asked for",
    "unstarted-ring-keeps-its-base": "a ring that never started reports "
                                     "the base it was given",
    "stop-completes-inflight": "\"By default, the back-end must complete "
                               "all inflight I/O requests for the "
                               "specified vring before stopping it\"",
    "channel-requests-known": "only back-end requests travel on the "
                              "back-end channel",
    "readable-message": "every message can be framed: a header and the "
                        "payload size it gives",
    "request-payload": "a request carries its payload type",
}
