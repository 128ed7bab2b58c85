#!/usr/bin/env python3
"""A per-session shopping cart behind the handover sidecar, with the Python standard library only.

The cart lives in this process's memory, keyed by the `Handover-Session` header the sidecar adds
to every request. The app speaks the handover contract (sidecar/README.md):

  push     every response that changes a cart carries `Handover-State: <base64url, no padding>`
           of the cart's state bytes (empty when the cart is gone), so the client's cookie always
           holds the newest cart and a crash loses nothing the client was answered;
  pull     GET <state path> with Handover-Session -> 200 + the state bytes, or 404;
  restore  PUT <state path> with Handover-Session and the bytes -> 204; idempotent. A state this
           app cannot read answers 400: the sidecar drops it and starts a fresh session (a 5xx
           would be retried, then answered 502 with the client's cookie kept);
  left     DELETE <state path> with Handover-Session -> 204: the session left this pod (its
           cookie expired, or another pod owns it now); the cart is forgotten.
  format   every pushed state, and the answer to a pull, declare the state's format in
           `Handover-State-Format: cart-v1`; the sidecar seals it with the state and gives it back
           on the restore's PUT, where a format this release does not read (READS_FORMATS) answers
           415 with the reason before the bytes are even parsed — during a rolling update or a
           rollback, a release refuses a state it cannot read, and the session starts afresh.
  instance every answer of the state endpoint carries `Handover-Instance: <id>`, new at each start
           of this process: the sidecar tells a restart (a new id: every session is checked or
           restored) from a keep-alive connection this server closed (the same id: nothing to do).

Pull and restore are served on a listener of their own (--state-listen, the pod's loopback:
the sidecar's --state-addr), never on the client port: no client request can reach them, however
it spells the path.

The state bytes are this app's own format, versioned: {"v": 1, "items": {"<sku>": <qty>, ...}}.

Routes for clients (through the sidecar):

  GET    /cart                      the cart
  POST   /cart/items?sku=S&qty=N    add N (default 1) of S; a JSON body {"sku": S, "qty": N} works too
  DELETE /cart/items/S              remove S
  POST   /login                     a privilege change: the cart is kept and the session gets a new id
                                    (Handover-Rotate: 1), so a cookie fixated before it is worthless
  DELETE /cart                      empty the cart (the state is deleted: the sidecar deletes the cookie)
  GET    /healthz                   200 (no session needed)

Run it (the sidecar in front of it, see examples/python-app/README.md):

  python3 examples/python-app/app.py --listen 127.0.0.1:8080 --state-listen 127.0.0.1:8081
"""

import argparse
import base64
import json
import re
import secrets
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SESSION_HEADER = "Handover-Session"
STATE_HEADER = "Handover-State"
FORMAT_HEADER = "Handover-State-Format"
READS_HEADER = "Handover-Reads"
INSTANCE_HEADER = "Handover-Instance"
# New at each start of the process: the sidecar's sign that this app restarted and lost its carts.
INSTANCE = secrets.token_hex(16)
STATE_VERSION = 1
STATE_FORMAT = f"cart-v{STATE_VERSION}"
# The formats this release restores: its own, and any older one it can still read.
READS_FORMATS = {STATE_FORMAT}
MAX_BODY = 64 * 1024
MAX_ITEMS = 200
MAX_QTY = 1_000_000
SKU = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BadRequest(Exception):
    """A request this app refuses with 400 and the message."""


class Carts:
    """Every session's cart, in memory: {session id: {sku: qty}}."""

    def __init__(self):
        self._lock = threading.Lock()
        self._carts = {}

    def get(self, session):
        with self._lock:
            cart = self._carts.get(session)
            return None if cart is None else dict(cart)

    def add(self, session, sku, qty):
        with self._lock:
            cart = self._carts.setdefault(session, {})
            if sku not in cart and len(cart) >= MAX_ITEMS:
                raise BadRequest(f"a cart holds at most {MAX_ITEMS} different items")
            cart[sku] = min(cart.get(sku, 0) + qty, MAX_QTY)
            return dict(cart)

    def remove(self, session, sku):
        with self._lock:
            cart = self._carts.setdefault(session, {})
            cart.pop(sku, None)
            return dict(cart)

    def clear(self, session):
        with self._lock:
            self._carts.pop(session, None)

    def put(self, session, cart):
        with self._lock:
            self._carts[session] = dict(cart)


def encode_state(cart):
    """The state bytes of a cart: this app's format, with its version."""
    return json.dumps({"v": STATE_VERSION, "items": cart}, sort_keys=True, separators=(",", ":")).encode()


def decode_state(data):
    """A cart from state bytes; BadRequest when they are not a cart of a version this app reads."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"state is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION or not isinstance(doc.get("items"), dict):
        raise BadRequest(f"state is not a version {STATE_VERSION} cart")
    cart = {}
    for sku, qty in doc["items"].items():
        if not SKU.match(sku) or not isinstance(qty, int) or isinstance(qty, bool) or not 0 < qty <= MAX_QTY:
            raise BadRequest(f"state holds a bad item {sku!r}: {qty!r}")
        cart[sku] = qty
    if len(cart) > MAX_ITEMS:
        raise BadRequest("state holds too many items")
    return cart


def b64url(data):
    """base64url without padding, as Handover-State wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_handler(carts, state_path, verbose, state_endpoint):
    """The client routes, or (state_endpoint) the sidecar's state calls and nothing else."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the sidecar reuses connections
        server_version = "handover-python-cart/1"

        def log_message(self, fmt, *args):
            if verbose:
                sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

        # --- plumbing ---------------------------------------------------------------------

        def _body(self):
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked_body()
            if not length:
                return b""
            try:
                n = int(length)
            except ValueError:
                raise BadRequest("bad Content-Length") from None
            if n < 0 or n > MAX_BODY:
                raise BadRequest(f"body larger than {MAX_BODY} bytes")
            return self.rfile.read(n)

        def _chunked_body(self):
            data = b""
            while True:
                line = self.rfile.readline(100).strip()
                try:
                    size = int(line.split(b";")[0], 16)
                except ValueError:
                    raise BadRequest("bad chunk size") from None
                if size == 0:
                    while self.rfile.readline(1000).strip():
                        pass
                    return data
                if len(data) + size > MAX_BODY:
                    raise BadRequest(f"body larger than {MAX_BODY} bytes")
                data += self.rfile.read(size)
                self.rfile.readline(10)

        def _send(self, status, body=b"", content_type="application/json", headers=()):
            if isinstance(body, (dict, list)):
                body = (json.dumps(body, sort_keys=True) + "\n").encode()
            elif isinstance(body, str):
                body = body.encode()
                content_type = "text/plain; charset=utf-8"
            self.send_response(status)
            if state_endpoint:
                # Every answer to the sidecar names this process (a restart is a new instance) and
                # the formats this release reads (a takeover it cannot read goes to a pod that can).
                self.send_header(INSTANCE_HEADER, INSTANCE)
                self.send_header(READS_HEADER, ", ".join(sorted(READS_FORMATS)))
            for name, value in headers:
                self.send_header(name, value)
            if body or status not in (204, 304):
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _session(self):
            session = self.headers.get(SESSION_HEADER, "").strip()
            if not session:
                raise BadRequest(f"no {SESSION_HEADER} header: talk to this app through the handover sidecar")
            return session

        def _cart_reply(self, session, cart, status=200):
            """The cart, and its new state pushed to the sidecar."""
            self._send(
                status,
                {"session": session, "items": cart, "count": sum(cart.values())},
                headers=[(STATE_HEADER, b64url(encode_state(cart))), (FORMAT_HEADER, STATE_FORMAT)],
            )

        def _route(self, method):
            path = urlsplit(self.path).path
            query = parse_qs(urlsplit(self.path).query)
            try:
                if method == "GET" and path == "/healthz":
                    return self._send(200, "ok\n")
                body = self._body()
                if state_endpoint:
                    if path == state_path:
                        return self._state(method, body)
                    return self._send(404, "state endpoint: GET/PUT the state path\n")
                if path == "/cart" and method == "GET":
                    session = self._session()
                    cart = carts.get(session) or {}
                    return self._send(200, {"session": session, "items": cart, "count": sum(cart.values())})
                if path == "/cart" and method == "DELETE":
                    session = self._session()
                    carts.clear(session)
                    # An empty Handover-State deletes the session's state from the cookie.
                    return self._send(204, headers=[(STATE_HEADER, "")])
                if path == "/login" and method == "POST":
                    session = self._session()
                    cart = carts.get(session) or {}
                    # The sidecar moves the cart to a new session id and seals that one.
                    return self._send(
                        200,
                        {"session": session, "items": cart, "count": sum(cart.values())},
                        headers=[
                            (STATE_HEADER, b64url(encode_state(cart))),
                            (FORMAT_HEADER, STATE_FORMAT),
                            ("Handover-Rotate", "1"),
                        ],
                    )
                if path == "/cart/items" and method == "POST":
                    session = self._session()
                    sku, qty = self._item(query, body)
                    return self._cart_reply(session, carts.add(session, sku, qty))
                if path.startswith("/cart/items/") and method == "DELETE":
                    session = self._session()
                    sku = unquote(path[len("/cart/items/"):])
                    if not SKU.match(sku):
                        raise BadRequest("bad sku")
                    return self._cart_reply(session, carts.remove(session, sku))
                if path in ("/cart", "/cart/items") or path.startswith("/cart/items/"):
                    return self._send(405, "method not allowed\n")
                return self._send(404, "not found\n")
            except BadRequest as e:
                self.close_connection = True  # what is left of the request is not trusted
                return self._send(400, f"{e}\n", headers=[("Connection", "close")])

        def _item(self, query, body):
            if body:
                try:
                    doc = json.loads(body)
                except ValueError:
                    raise BadRequest("body is not JSON") from None
                if not isinstance(doc, dict):
                    raise BadRequest('body is not {"sku": ..., "qty": ...}')
                sku, qty = doc.get("sku"), doc.get("qty", 1)
            else:
                sku = query.get("sku", [None])[0]
                try:
                    qty = int(query.get("qty", ["1"])[0])
                except ValueError:
                    raise BadRequest("qty is not a number") from None
            if not isinstance(sku, str) or not SKU.match(sku):
                raise BadRequest("sku must be 1 to 64 of A-Z a-z 0-9 . _ -")
            if not isinstance(qty, int) or isinstance(qty, bool) or not 0 < qty <= MAX_QTY:
                raise BadRequest(f"qty must be 1 to {MAX_QTY}")
            return sku, qty

        def _state(self, method, body):
            """The sidecar's side of the contract: pull (GET) and restore (PUT)."""
            session = self._session()
            if method == "GET":
                cart = carts.get(session)
                if cart is None:
                    return self._send(404, "no state for this session\n")
                return self._send(
                    200, encode_state(cart), content_type="application/octet-stream",
                    headers=[(FORMAT_HEADER, STATE_FORMAT)],
                )
            if method == "PUT":
                declared = self.headers.get(FORMAT_HEADER, "").strip()
                if declared and declared not in READS_FORMATS:
                    # A 4xx: "not for me"; the sidecar logs this body with the session id.
                    reads = ", ".join(sorted(READS_FORMATS))
                    return self._send(415, f"state format {declared} is not read by this release (reads {reads})\n")
                # Idempotent: the same bytes may arrive twice; the cart is set, never merged.
                # A state this app cannot read raises BadRequest: 400, "not for me".
                carts.put(session, decode_state(body))
                return self._send(204)
            if method == "DELETE":
                carts.clear(session)
                return self._send(204)
            return self._send(405, "method not allowed\n")

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def do_DELETE(self):
            self._route("DELETE")

    return Handler


def parse_listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv=None):
    parser = argparse.ArgumentParser(description="A per-session shopping cart that speaks the handover contract.")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8080),
                        help="HOST:PORT to listen on (default 127.0.0.1:8080: only the sidecar in the pod talks to it)")
    parser.add_argument("--state-listen", type=parse_listen, default=("127.0.0.1", 8081),
                        help="HOST:PORT of the state endpoint, the sidecar's --state-addr (default 127.0.0.1:8081; "
                             "keep it on loopback)")
    parser.add_argument("--state-path", default="/handover/state",
                        help="the pool's snapshot.statePath (default /handover/state)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    carts = Carts()
    server = ThreadingHTTPServer(args.listen, make_handler(carts, args.state_path, args.verbose, False))
    state_server = ThreadingHTTPServer(args.state_listen, make_handler(carts, args.state_path, args.verbose, True))
    threading.Thread(target=state_server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
        threading.Thread(target=state_server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    state_host, state_port = state_server.server_address[:2]
    print(f"python cart listening on {host}:{port}, state endpoint on {state_host}:{state_port}",
          file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
