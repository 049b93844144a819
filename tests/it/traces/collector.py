"""An OTLP/HTTP traces receiver for tests/it/traces.rs: decodes every POST body as an
ExportTraceServiceRequest with the `opentelemetry-proto` package (PyPI, pinned in scripts/test)
and appends one JSON line per span to LOG; answers 200 with an empty
ExportTraceServiceResponse, or 503 when MODE is "fail" (a collector that refuses).

usage: collector.py PORT LOG MODE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

PORT, LOG, MODE = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if MODE == "fail":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        lines = []
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(
                        json.dumps(
                            {
                                "path": self.path,
                                "content_type": self.headers.get("Content-Type"),
                                "authorization": self.headers.get("Authorization"),
                                "service": resource.get("service.name"),
                                "scope": ss.scope.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "name": s.name,
                                "kind": s.kind,
                                "flags": s.flags,
                                "start": s.start_time_unix_nano,
                                "end": s.end_time_unix_nano,
                                "status": s.status.code,
                                "attributes": {a.key: value(a.value) for a in s.attributes},
                            }
                        )
                    )
        with open(LOG, "a") as f:
            for l in lines:
                f.write(l + "\n")
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
