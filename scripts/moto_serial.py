"""moto's DynamoDB server, one request at a time.

Real DynamoDB applies every request atomically. moto's threaded server does not: an
UpdateItem that creates an item is first stored with its key alone, so a GetItem in
another thread can read a half-written item, and two conditional writes can both pass
their check. Serialising requests (moto is GIL-bound anyway) makes the test server as
atomic as the real one. Arguments are moto_server's.
"""

import threading

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_one_at_a_time = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _serialised(self, environ, start_response):
    with _one_at_a_time:
        # moto's responses are built in full before they are returned.
        return list(_dispatch(self, environ, start_response))


DomainDispatcherApplication.__call__ = _serialised

if __name__ == "__main__":
    server.main()
