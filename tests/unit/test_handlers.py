"""The request table: each handler is marked with the request it handles,
right above it, and the table the session looks requests up in is built
from those marks alone."""

import unittest

from avocado_vhost.vhost_user.handlers import RequestHandlers
from avocado_vhost.vhost_user.handlers.base import Refused
from avocado_vhost.vhost_user.message import Empty, Request
from avocado_vhost.vhost_user.state import DeviceState


class RequestTable(unittest.TestCase):

    def setUp(self):
        self.handlers = RequestHandlers(DeviceState(), host=None)

    def test_each_handler_is_named_after_its_request(self):
        """A mark on the wrong method would answer a request with another
        request's handler."""
        for request, method in self.handlers.handled.items():
            self.assertEqual(method.__name__, request.name.lower())

    def test_what_is_not_in_the_table_is_refused(self):
        unhandled = [r for r in Request if r not in self.handlers.handled
                     and r is not Request.NONE]
        self.assertIn(Request.GPU_SET_SOCKET, unhandled)
        with self.assertRaises(Refused):
            self.handlers.handler(Request.GPU_SET_SOCKET)(Empty(), [])

    def test_the_table_covers_the_spec_this_back_end_implements(self):
        self.assertEqual(len(self.handlers.handled), 42)


if __name__ == "__main__":
    unittest.main()
