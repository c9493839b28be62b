//! Errors of the HTTP API as problem documents (RFC 9457,
//! `application/problem+json`), with the same codes as the CBOR API.

use crate::api::{ApiError, ErrorCode};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document: what went wrong, in the CBOR API's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:understudy:error:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The code, as the CBOR API names it (`NotLeader`, `BadRequest`, …).
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What happened, and what to do about it.
    pub detail: String,
    /// The leader, when known (a write that could not reach it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// The leader's client address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_address: Option<String>,
}

impl Problem {
    /// A problem with `code` (its name is the title) and `status`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:understudy:error:{code}"),
            title: code.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            leader: None,
            leader_address: None,
        }
    }

    /// `BadRequest` (400).
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "BadRequest", detail)
    }

    /// The HTTP status of a CBOR API error code.
    pub fn status_of(code: ErrorCode) -> StatusCode {
        match code {
            ErrorCode::BadRequest | ErrorCode::BadFrame => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::NoSuchActor => StatusCode::NOT_FOUND,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            // A write this node could not pass on to a leader; the leader
            // is named when known.
            ErrorCode::NotLeader => StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::Superseded | ErrorCode::Stale => StatusCode::CONFLICT,
            ErrorCode::UnsupportedVersion => StatusCode::BAD_REQUEST,
            ErrorCode::Unavailable | ErrorCode::Quarantined => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response carrying this document.
    pub fn response(&self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = HttpResponse::build(status);
        r.content_type(PROBLEM_JSON);
        if matches!(self.status, 429 | 503) {
            r.insert_header(("Retry-After", "1"));
        }
        r.json(self)
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Problem {
        let mut p = Problem::new(
            Problem::status_of(e.code),
            &format!("{:?}", e.code),
            e.message,
        );
        p.leader = e.leader;
        p.leader_address = e.leader_address;
        p
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST)
    }
    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_maps_to_a_4xx_or_a_retryable_5xx() {
        use ErrorCode::*;
        for code in [
            NotLeader,
            BadRequest,
            BadFrame,
            UnsupportedVersion,
            Overloaded,
            Unavailable,
            NoSuchActor,
            Stale,
            Timeout,
            Superseded,
            Quarantined,
            TooLarge,
            Unauthenticated,
            PermissionDenied,
        ] {
            let s = Problem::status_of(code).as_u16();
            // What a client sent is never a 5xx; a 5xx is only the node's
            // state (no leader, not caught up, quarantined), and retryable.
            let retryable = matches!(code, Unavailable | Quarantined | Timeout);
            assert!(
                (400..500).contains(&s) || (retryable && (503..=504).contains(&s)),
                "{code:?} → {s}"
            );
        }
    }
}
