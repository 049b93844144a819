//! Why a call was not authenticated (stage 3), shared by the key table and the JWT verifier.
use crate::error::Refusal;

/// Why a call was not authenticated. Maps 1:1 onto the spec codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("credential expired")]
    CredentialExpired,
}

impl From<AuthnError> for Refusal {
    fn from(e: AuthnError) -> Refusal {
        match e {
            AuthnError::Unauthenticated => Refusal::Unauthenticated,
            AuthnError::CredentialExpired => Refusal::CredentialExpired,
        }
    }
}
