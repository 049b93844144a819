"""A do-nothing OTLP/HTTP collector for `TRACES=<sample> bench/portcullis-anchor.sh`: answers
every POST 200 (empty body) after reading it, so the gateway's exporter runs as it would against
a real collector. Writes its port to PORT_FILE; on SIGTERM prints exports and bytes received.

usage: otlp-sink.py PORT_FILE
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

exports = 0
received = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global exports, received
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        exports += 1
        received += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def done(*_):
    print(f"otlp-sink: {exports} exports, {received} bytes", file=sys.stderr)
    sys.exit(0)


signal.signal(signal.SIGTERM, done)
srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
