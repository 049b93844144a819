//! The one refusal enum. Every response the gateway makes on its own behalf comes from a
//! `Refusal`, and `status()` / `code()` are exhaustive, so the compiler checks the mapping to
//! the spec's error codes. Messages are static text: nothing from a request, a config secret or
//! an upstream ever lands in them.

/// Why the gateway answered a call itself instead of forwarding (or finishing forwarding) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No proxy credential, or one that matches no agent.
    Unauthenticated,
    /// The agent key or token is past its `expires_at` / `exp`.
    CredentialExpired,
    /// `Unauthenticated` or `CredentialExpired` (`expired`) on a request in forward-proxy form
    /// (absolute-form target or CONNECT): 407 with `Proxy-Authenticate: Basic
    /// realm="portcullis"`, the answer HTTP clients expect from a proxy that wants the
    /// credentials of its URL. The code stays the one the 401 would carry.
    ProxyAuthRequired { expired: bool },
    /// No rule matched and the proxy's `default_effect` is deny.
    NoRuleMatched,
    /// A `deny` rule matched.
    DeniedByRule,
    /// An `approve` rule held the call and no decision came within its `hold`: retry with
    /// the same call later (`Retry-After`, `Portcullis-Approval: <id>`).
    ApprovalPending { id: String, retry_after: u64 },
    /// The call's approval was denied (the approver's reason, if any).
    ApprovalDenied { id: String, reason: Option<String> },
    /// The call's approval ran out (`ttl`) before it was used.
    ApprovalExpired { id: String },
    /// `[approvals] max_pending` approvals are already waiting.
    ApprovalQueueFull,
    /// The state store cannot record the approval (disk or Redis failing).
    ApprovalUnavailable,
    /// A scanner hit in the request body (names the scanner, never the content).
    PayloadBlocked { scanner: String },
    /// MCP: a `tools/call` of a tool whose description a scanner matched in a list answer
    /// (names the scanner).
    ToolScreened { scanner: String },
    /// MCP: a `tools/call` of a tool whose definition changed since it was pinned (rug-pull
    /// protection), until an operator accepts the new definition.
    ToolChanged { tool: String },
    /// The first path segment names no proxy.
    UnknownProxy,
    /// An absolute-form request whose origin and base path fall under no proxy, or a
    /// `CONNECT` to an origin no intercepting proxy serves and no `[forward] tunnel` lists.
    UnknownOrigin,
    /// `CONNECT` to a `[forward] tunnel` entry that does not name this agent or its roles.
    TunnelDenied,
    /// A tunnel's destination resolved to a loopback, private, link-local, CGNAT, multicast or
    /// cloud-metadata address and the entry does not say `allow_private = true`.
    SsrfBlocked,
    /// A meter ran out; retry after this many seconds.
    RateLimited { retry_after: u64 },
    /// A budget (`[[proxies.budgets]]`) is spent for this window: retry when it refills
    /// (`Retry-After`), `RateLimit-*` fields name the budget (its name is config text).
    BudgetExhausted {
        budget: String,
        limit: u64,
        per_secs: u64,
        retry_after: u64,
    },
    /// The request body is larger than `max_request_body`.
    BodyTooLarge,
    /// The request is malformed or ambiguous; the reason is a short static text.
    BadRequest(&'static str),
    /// The upstream could not be reached or answered with something unusable.
    UpstreamUnreachable(&'static str),
    /// The upstream did not send a response head within `upstream_timeout`.
    UpstreamTimeout,
    /// The target credential could not be produced (OAuth2 token unavailable, signing failed).
    UpstreamAuthFailed(&'static str),
    /// Cluster meters: Redis is unreachable and `on_redis_down` refuses this call.
    MeterUnavailable,
    /// A `kv:` secret the credential needs cannot be served (never read, or older than
    /// `ttl + max_stale` while the KV server cannot be read): fail closed.
    SecretUnavailable(&'static str),
    /// `[audit] on_error = "refuse"`: the call's audit record cannot be written (the disk
    /// refuses writes, or the audit queue is full), so the call is not made.
    AuditUnavailable,
    /// The worker's request bodies in flight already hold `max_body_memory`: this body is not
    /// read (503 with `Retry-After: 1`; nothing goes upstream).
    Overloaded,
    /// The agent closed its connection while its call was held for approval (no answer is
    /// sent: the audit record and the metric say so; the approval stays in the store).
    ClientClosed,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated | Refusal::CredentialExpired => 401,
            Refusal::ProxyAuthRequired { .. } => 407,
            Refusal::NoRuleMatched
            | Refusal::DeniedByRule
            | Refusal::ApprovalPending { .. }
            | Refusal::ApprovalDenied { .. }
            | Refusal::ApprovalExpired { .. }
            | Refusal::PayloadBlocked { .. }
            | Refusal::ToolScreened { .. }
            | Refusal::ToolChanged { .. }
            | Refusal::UnknownOrigin
            | Refusal::TunnelDenied
            | Refusal::SsrfBlocked => 403,
            Refusal::UnknownProxy => 404,
            Refusal::RateLimited { .. } | Refusal::BudgetExhausted { .. } => 429,
            Refusal::BodyTooLarge => 413,
            Refusal::BadRequest(_) => 400,
            Refusal::UpstreamUnreachable(_)
            | Refusal::UpstreamAuthFailed(_)
            | Refusal::SecretUnavailable(_) => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::MeterUnavailable
            | Refusal::AuditUnavailable
            | Refusal::ApprovalQueueFull
            | Refusal::ApprovalUnavailable
            | Refusal::Overloaded => 503,
            // nginx's "client closed request": recorded, never sent
            Refusal::ClientClosed => 499,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::CredentialExpired => "credential_expired",
            Refusal::ProxyAuthRequired { expired: false } => "unauthenticated",
            Refusal::ProxyAuthRequired { expired: true } => "credential_expired",
            Refusal::NoRuleMatched => "no_rule_matched",
            Refusal::DeniedByRule => "denied_by_rule",
            Refusal::ApprovalPending { .. } => "approval_pending",
            Refusal::ApprovalDenied { .. } => "approval_denied",
            Refusal::ApprovalExpired { .. } => "approval_expired",
            Refusal::ApprovalQueueFull => "approval_queue_full",
            Refusal::ApprovalUnavailable => "approval_unavailable",
            Refusal::PayloadBlocked { .. } => "payload_blocked",
            Refusal::ToolScreened { .. } => "tool_screened",
            Refusal::ToolChanged { .. } => "tool_changed",
            Refusal::UnknownProxy => "unknown_proxy",
            Refusal::UnknownOrigin => "unknown_origin",
            Refusal::TunnelDenied => "tunnel_denied",
            Refusal::SsrfBlocked => "ssrf_blocked",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::BudgetExhausted { .. } => "budget_exhausted",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::UpstreamUnreachable(_) => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::UpstreamAuthFailed(_) => "upstream_auth_failed",
            Refusal::MeterUnavailable => "meter_unavailable",
            Refusal::SecretUnavailable(_) => "secret_unavailable",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::Overloaded => "overloaded",
            Refusal::ClientClosed => "client_closed",
        }
    }

    /// The refusal a forward-proxy request (absolute-form or CONNECT) gets instead: an
    /// authentication failure becomes 407; anything else is unchanged.
    pub fn in_proxy_mode(self) -> Refusal {
        match self {
            Refusal::Unauthenticated => Refusal::ProxyAuthRequired { expired: false },
            Refusal::CredentialExpired => Refusal::ProxyAuthRequired { expired: true },
            other => other,
        }
    }

    /// Human-readable explanation for the JSON error body.
    pub fn message(&self) -> String {
        match self {
            Refusal::Unauthenticated => "a valid proxy credential is required".into(),
            Refusal::CredentialExpired | Refusal::ProxyAuthRequired { expired: true } => {
                "the proxy credential has expired".into()
            }
            Refusal::ProxyAuthRequired { expired: false } => {
                "a valid proxy credential is required (Proxy-Authorization: Basic with the agent \
                 key or token as the password, or Bearer)"
                    .into()
            }
            Refusal::NoRuleMatched => "no rule allows this call".into(),
            Refusal::DeniedByRule => "a rule denies this call".into(),
            Refusal::ApprovalPending { id, .. } => {
                format!("this call waits for a human approval ({id}); repeat the same call later")
            }
            Refusal::ApprovalDenied { id, reason } => match reason {
                Some(r) => format!("the approval {id} was denied: {r}"),
                None => format!("the approval {id} was denied"),
            },
            Refusal::ApprovalExpired { id } => {
                format!(
                    "the approval {id} expired before it was used; repeat the call to ask again"
                )
            }
            Refusal::ApprovalQueueFull => "too many approvals are pending; retry later".into(),
            Refusal::ApprovalUnavailable => "the approval store is unavailable; retry later".into(),
            Refusal::PayloadBlocked { scanner } => {
                format!("the request body was blocked by scanner '{scanner}'")
            }
            Refusal::ToolScreened { scanner } => {
                format!("the tool's description was screened out by scanner '{scanner}'")
            }
            Refusal::ToolChanged { tool } => format!(
                "the definition of tool {tool} changed since it was pinned; an operator must accept it"
            ),
            Refusal::UnknownProxy => "no proxy with this name".into(),
            Refusal::UnknownOrigin => "no proxy is configured for this origin".into(),
            Refusal::TunnelDenied => "this agent may not open a tunnel to this origin".into(),
            Refusal::SsrfBlocked => {
                "the tunnel's destination is a private, loopback, link-local or metadata address"
                    .into()
            }
            Refusal::BudgetExhausted {
                budget,
                retry_after,
                ..
            } => {
                format!("budget {budget:?} is spent for this window; it refills in {retry_after} s")
            }
            Refusal::RateLimited { retry_after } => {
                format!("rate limit exceeded; retry after {retry_after} s")
            }
            Refusal::BodyTooLarge => "the request body exceeds max_request_body".into(),
            Refusal::BadRequest(why) => format!("bad request: {why}"),
            Refusal::UpstreamUnreachable(why) => format!("upstream unreachable: {why}"),
            Refusal::UpstreamTimeout => "the upstream did not answer in time".into(),
            Refusal::UpstreamAuthFailed(why) => {
                format!("the target credential could not be produced: {why}")
            }
            Refusal::MeterUnavailable => {
                "the shared rate limit store is unreachable; retry later".into()
            }
            Refusal::SecretUnavailable(why) => {
                format!("the target credential's secret is unavailable: {why}")
            }
            Refusal::AuditUnavailable => {
                "the audit trail cannot record this call right now (on_error = \"refuse\"); \
                 retry later"
                    .into()
            }
            Refusal::Overloaded => {
                "the gateway holds too many request bodies right now (max_body_memory); retry \
                 later"
                    .into()
            }
            Refusal::ClientClosed => "the agent closed its connection before the answer".into(),
        }
    }

    /// The approval an answer is about (its JSON error carries `approval_id`).
    pub fn approval_id(&self) -> Option<&str> {
        match self {
            Refusal::ApprovalPending { id, .. }
            | Refusal::ApprovalDenied { id, .. }
            | Refusal::ApprovalExpired { id } => Some(id),
            _ => None,
        }
    }

    /// The reason phrase for the status line.
    pub fn reason(&self) -> &'static str {
        reason_phrase(self.status())
    }
}

/// Canonical reason phrases for the statuses the gateway produces itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        499 => "Client Closed Request",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes_and_statuses() {
        let table: &[(Refusal, u16, &str)] = &[
            (Refusal::Unauthenticated, 401, "unauthenticated"),
            (Refusal::CredentialExpired, 401, "credential_expired"),
            (
                Refusal::ProxyAuthRequired { expired: false },
                407,
                "unauthenticated",
            ),
            (
                Refusal::ProxyAuthRequired { expired: true },
                407,
                "credential_expired",
            ),
            (Refusal::NoRuleMatched, 403, "no_rule_matched"),
            (Refusal::DeniedByRule, 403, "denied_by_rule"),
            (
                Refusal::ApprovalPending {
                    id: "apr_1".into(),
                    retry_after: 5,
                },
                403,
                "approval_pending",
            ),
            (
                Refusal::ApprovalDenied {
                    id: "apr_1".into(),
                    reason: None,
                },
                403,
                "approval_denied",
            ),
            (
                Refusal::ApprovalExpired { id: "apr_1".into() },
                403,
                "approval_expired",
            ),
            (Refusal::ApprovalQueueFull, 503, "approval_queue_full"),
            (Refusal::ApprovalUnavailable, 503, "approval_unavailable"),
            (
                Refusal::PayloadBlocked {
                    scanner: "s".into(),
                },
                403,
                "payload_blocked",
            ),
            (Refusal::UnknownProxy, 404, "unknown_proxy"),
            (Refusal::UnknownOrigin, 403, "unknown_origin"),
            (Refusal::TunnelDenied, 403, "tunnel_denied"),
            (Refusal::SsrfBlocked, 403, "ssrf_blocked"),
            (Refusal::RateLimited { retry_after: 1 }, 429, "rate_limited"),
            (
                Refusal::BudgetExhausted {
                    budget: "tokens".into(),
                    limit: 10,
                    per_secs: 60,
                    retry_after: 3,
                },
                429,
                "budget_exhausted",
            ),
            (Refusal::BodyTooLarge, 413, "body_too_large"),
            (Refusal::BadRequest("x"), 400, "bad_request"),
            (
                Refusal::UpstreamUnreachable("x"),
                502,
                "upstream_unreachable",
            ),
            (Refusal::UpstreamTimeout, 504, "upstream_timeout"),
            (Refusal::MeterUnavailable, 503, "meter_unavailable"),
            (Refusal::SecretUnavailable("x"), 502, "secret_unavailable"),
            (Refusal::AuditUnavailable, 503, "audit_unavailable"),
            (Refusal::Overloaded, 503, "overloaded"),
            (Refusal::ClientClosed, 499, "client_closed"),
        ];
        for (r, status, code) in table {
            assert_eq!(r.status(), *status, "{code}");
            assert_eq!(r.code(), *code);
            assert!(!r.reason().is_empty());
        }
    }
}

#[cfg(test)]
mod reference_tests {
    /// Every code `Refusal::code` can return has a row in docs/errors.md (read from this
    /// file's source, so a new variant without documentation fails here).
    #[test]
    fn every_refusal_code_is_in_the_errors_reference() {
        let src = include_str!("error.rs");
        let doc = include_str!("../docs/errors.md");
        let body = src
            .split("pub fn code(&self)")
            .nth(1)
            .and_then(|b| b.split("\n    }\n").next())
            .expect("Refusal::code in error.rs");
        let codes: Vec<&str> = body
            .split("=> \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        assert!(codes.len() >= 20, "found only {codes:?}");
        let missing: Vec<&&str> = codes
            .iter()
            .filter(|c| !doc.contains(&format!("| `{c}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "codes missing from docs/errors.md: {missing:?}"
        );
    }
}
