//! portcullis: an egress gateway for AI agents. ARCHITECTURE.md (at the repository root) tells the
//! life of a call by file and function; `pipeline/mod.rs` is the one straight-line story of a call.
// `deny`, not `forbid`, so that `observe/audit/ring.rs` alone can `allow` it (each unsafe block
// there has a SAFETY comment). A unit test (`observe::audit::tests::unsafe_only_in_ring`) fails the
// build's tests if any other file under src/ allows or uses `unsafe`.
#![deny(unsafe_code)]

pub mod cli;
pub(crate) mod config;
pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod identity;
pub(crate) mod mcp;
pub(crate) mod net;
pub(crate) mod observe;
pub(crate) mod pipeline;
pub(crate) mod policy;
pub(crate) mod redact;
pub(crate) mod scan;
pub(crate) mod secrets;
pub(crate) mod server;
pub(crate) mod siem;
pub(crate) mod state;
pub(crate) mod upstream;
pub(crate) mod util;

#[cfg(test)]
mod layering;

/// The library's surface for the binary's front-end (`cli`) is public; everything else is
/// crate-private. Integration tests, criterion benches and cargo-fuzz targets reach the few
/// internals they exercise through this facade, which names each item on purpose, so that the
/// compiler reports any crate item nothing uses (issue 11: "modules `pub(crate)` behind a small
/// facade"). Not an API: it changes whenever the code does.
#[doc(hidden)]
pub mod internals {
    pub mod credentials {
        pub mod sigv4 {
            pub use crate::credentials::sigv4::canonical_query;
        }
    }
    pub mod http {
        pub mod canon {
            pub use crate::http::canon::{
                MAX_PATH_LEN, PathParams, canonicalize, canonicalize_with,
            };
        }
        pub mod chunked {
            pub use crate::http::chunked::{ChunkedDecoder, ChunkedError};
        }
        pub mod head {
            pub use crate::http::head::{
                Limits, RequestHead, ResponseHead, Span, parse_request, parse_response,
            };
        }
    }
    pub mod identity {
        pub use crate::identity::{Credential, extract_credential, key_sha256_hex};
        pub mod jwt {
            pub use crate::identity::jwt::peek_issuer;
        }
    }
    pub mod mcp {
        pub mod glob {
            pub use crate::mcp::glob::Glob;
        }
        pub mod jsonrpc {
            pub use crate::mcp::jsonrpc::{
                Body, DEFAULT_MAX_BATCH, Id, McpError, Message, Target, check_headers,
                decode_header_value, parse_body,
            };
        }
        pub mod lists {
            pub use crate::mcp::lists::{Keep, ListFilter, ListKind, ListPolicy, ListStats, Mode};
        }
    }
    pub mod observe {
        pub mod audit {
            pub use crate::observe::audit::{
                AuditConfig, AuditRecord, Decision, FsyncPolicy, OnFull, Query, Ring, SmallStr,
                StatusFilter, StoredRecord, query, start,
            };
            pub mod files {
                pub use crate::observe::audit::files::list_files;
            }
            pub mod record {
                pub use crate::observe::audit::record::{Entry, GENESIS, encode_line};
            }
            pub mod verify {
                pub use crate::observe::audit::verify::read_all;
            }
        }
        pub mod trace {
            pub use crate::observe::trace::{
                CallTrace, SpanQueue, TRACEPARENT_LEN, TraceParent, TraceStats, Tracer, format,
                parse,
            };
        }
    }
    pub mod policy {
        pub mod authz {
            pub use crate::policy::authz::{Decision, Effect, MethodsSpec, RawRule, RuleSet};
        }
        pub mod meter {
            pub use crate::policy::meter::{MeterBy, MeterSpec, ProxyMeter, Rate, Verdict};
            pub mod cluster {
                pub use crate::policy::meter::cluster::{
                    Cluster, LimitArgs, OnDown, Settings, Store, TakeReq,
                };
            }
            pub mod redis_store {
                pub use crate::policy::meter::redis_store::{
                    RedisStore, connection_info, connector,
                };
            }
        }
    }
    pub mod redact {
        pub mod mask {
            pub use crate::redact::mask::{MASK_BYTE, MIN_MARK, Masker};
        }
        pub use crate::redact::{
            Action, Captured, DEFAULT_MAX_EVENT, JsonRedactor, Limits, OnInvalid, RedactError,
            RedactProgram, SseRedactor,
        };
        pub mod usage {
            pub use crate::redact::usage::{
                Aggregate, BodyValue, Outcome, Reading, Term, header_value, units,
            };
        }
    }
    pub mod scan {
        pub use crate::scan::{Detector, RawScanner, ScanSet};
    }
    pub mod secrets {
        pub mod vault_file {
            pub use crate::secrets::vault_file::{Vault, VaultKey};
        }
    }
    pub mod util {
        pub mod clock {
            pub use crate::util::clock::*;
        }
        pub mod datetime {
            pub use crate::util::datetime::parse_rfc3339;
        }
    }
}
