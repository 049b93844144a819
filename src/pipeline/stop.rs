//! How a call stops early, and what that means for the agent's connection. Every stage's error
//! converts into a `Stop` (`From`), so the story in `mod.rs` is a column of `?` with one
//! refusal exit; `keep_alive` decides from the refusal and the `Phase` the call had reached.
use crate::error::Refusal;
use crate::http::body::BodyFail;
use crate::identity::AuthnError;
use crate::scan::ScanError;
use crate::upstream::response::HeadFail;

/// How a call stops before its response is relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nothing to answer: the agent went away or stalled.
    Quiet,
    /// The gateway answers with this refusal.
    Refuse(Refusal),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refuse(r)
    }
}

impl From<AuthnError> for Stop {
    fn from(e: AuthnError) -> Stop {
        Stop::Refuse(e.into())
    }
}

impl From<BodyFail> for Stop {
    fn from(e: BodyFail) -> Stop {
        match e {
            BodyFail::TooLarge => Stop::Refuse(Refusal::BodyTooLarge),
            BodyFail::Overloaded => Stop::Refuse(Refusal::Overloaded),
            BodyFail::Bad(why) => Stop::Refuse(Refusal::BadRequest(why)),
            BodyFail::Gone => Stop::Quiet,
        }
    }
}

impl From<ScanError> for Stop {
    fn from(e: ScanError) -> Stop {
        Stop::Refuse(match e {
            ScanError::TooLarge => Refusal::BodyTooLarge,
            ScanError::UnsupportedEncoding => {
                Refusal::BadRequest("the request body's Content-Encoding cannot be scanned")
            }
            ScanError::Corrupt => {
                Refusal::BadRequest("the request body does not decode with its Content-Encoding")
            }
        })
    }
}

impl From<HeadFail> for Stop {
    fn from(e: HeadFail) -> Stop {
        Stop::Refuse(match e {
            HeadFail::ClosedEarly => {
                Refusal::UpstreamUnreachable("upstream closed the connection without a response")
            }
            HeadFail::Refused(r) => r,
        })
    }
}

/// How far a call got: what of the agent's request has been read decides whether its
/// connection can carry another request after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Deciding on the head (route, identity, rules, meter); the body is still unread.
    Decide,
    /// Reading or scanning the body.
    Body,
    /// The request is read whole: building the outbound request, calling the upstream.
    Forward,
    /// The upstream answered; planning the agent's response.
    Respond,
}

/// Whether the agent's connection stays open after `refusal` at `phase` (given the agent
/// asked for keep-alive and the worker is not draining). Before the body is read, only a
/// request without a body leaves the connection in sync, and a malformed request is never
/// trusted to; a refusal while reading or scanning the body leaves unread or unchecked bytes,
/// so the connection closes; once the request is read whole, the connection is in sync; a
/// response that cannot be planned closes it (the upstream's answer was unusable).
pub fn keep_alive(refusal: &Refusal, phase: Phase, bodiless: bool) -> bool {
    match phase {
        Phase::Decide => bodiless && !matches!(refusal, Refusal::BadRequest(_)),
        Phase::Body | Phase::Respond => false,
        Phase::Forward => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_after_a_refusal_is_a_function_of_the_phase() {
        use Phase::*;
        let denied = Refusal::DeniedByRule;
        let bad = Refusal::BadRequest("x");
        let cases: &[(&str, &Refusal, Phase, bool, bool)] = &[
            ("denied, no body: in sync", &denied, Decide, true, true),
            (
                "denied, unread body: out of sync",
                &denied,
                Decide,
                false,
                false,
            ),
            ("malformed target: never trusted", &bad, Decide, true, false),
            (
                "unknown proxy, no body",
                &Refusal::UnknownProxy,
                Decide,
                true,
                true,
            ),
            (
                "rate limited, no body",
                &Refusal::RateLimited { retry_after: 1 },
                Decide,
                true,
                true,
            ),
            (
                "body too large: unread",
                &Refusal::BodyTooLarge,
                Body,
                true,
                false,
            ),
            ("bad chunked body", &bad, Body, false, false),
            (
                "scanner hit",
                &Refusal::PayloadBlocked {
                    scanner: "s".into(),
                },
                Body,
                false,
                false,
            ),
            (
                "no OAuth2 token: request read",
                &Refusal::UpstreamAuthFailed("t"),
                Forward,
                false,
                true,
            ),
            (
                "secret unavailable: request read",
                &Refusal::SecretUnavailable("s"),
                Forward,
                false,
                true,
            ),
            (
                "upstream down: request read",
                &Refusal::UpstreamUnreachable("u"),
                Forward,
                true,
                true,
            ),
            (
                "upstream timeout",
                &Refusal::UpstreamTimeout,
                Forward,
                false,
                true,
            ),
            (
                "unredactable response",
                &Refusal::UpstreamUnreachable("r"),
                Respond,
                false,
                false,
            ),
        ];
        for (name, r, phase, bodiless, want) in cases {
            assert_eq!(keep_alive(r, *phase, *bodiless), *want, "{name}");
        }
    }

    #[test]
    fn stage_errors_convert_to_one_stop() {
        let cases: &[(&str, Stop, Stop)] = &[
            ("body gone", BodyFail::Gone.into(), Stop::Quiet),
            (
                "body too large",
                BodyFail::TooLarge.into(),
                Stop::Refuse(Refusal::BodyTooLarge),
            ),
            (
                "body bad",
                BodyFail::Bad("b").into(),
                Stop::Refuse(Refusal::BadRequest("b")),
            ),
            (
                "scan too large",
                ScanError::TooLarge.into(),
                Stop::Refuse(Refusal::BodyTooLarge),
            ),
            (
                "authn expired",
                AuthnError::CredentialExpired.into(),
                Stop::Refuse(Refusal::CredentialExpired),
            ),
            (
                "upstream closed early",
                HeadFail::ClosedEarly.into(),
                Stop::Refuse(Refusal::UpstreamUnreachable(
                    "upstream closed the connection without a response",
                )),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        assert!(matches!(
            Stop::from(ScanError::UnsupportedEncoding),
            Stop::Refuse(Refusal::BadRequest(_))
        ));
    }
}
