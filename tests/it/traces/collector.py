"""An OTLP/HTTP receiver for tests/it/traces.rs: decodes every POST body with the
`opentelemetry-proto` package (PyPI, pinned in scripts/test) — an ExportTraceServiceRequest,
or an ExportLogsServiceRequest when the path ends in /v1/logs — and appends one JSON line per
span (or `"signal": "log"` line per log record) to LOG; answers 200 with the empty export
response, or 503 when MODE is "fail" (a collector that refuses).

usage: collector.py PORT LOG MODE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
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
        if self.path.endswith("/v1/logs"):
            return self.logs(body)
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

    def logs(self, body):
        req = logs_service_pb2.ExportLogsServiceRequest()
        req.ParseFromString(body)
        with open(LOG, "a") as f:
            for rl in req.resource_logs:
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        rec = {
                            "signal": "log",
                            "trace_id": r.trace_id.hex(),
                            "event_name": r.event_name,
                            "body": value(r.body),
                            "attributes": {a.key: value(a.value) for a in r.attributes},
                        }
                        f.write(json.dumps(rec) + "\n")
        out = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
