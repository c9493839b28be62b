//! The HTTP API's vocabulary: its routes, limits, and the JSON documents
//! it takes and answers (with their OpenAPI schemas). The floor under the
//! handlers (`mod.rs`) and the document (`openapi.rs`).

use serde::{Deserialize, Serialize};

/// Most bytes of a JSON request body (a command, a query, a change). A
/// command's CBOR must also fit `COMMAND_BYTES_MAX`; JSON is larger than
/// the CBOR it becomes, so the body may be twice that.
pub const HTTP_JSON_BODY_BYTES_MAX: usize = 2 * crate::limits::COMMAND_BYTES_MAX;

/// Most connections a follower keeps open to leaders to pass writes on
/// (one per leader address and caller token); past it the oldest ones
/// are closed.
pub const PROXY_CONNECTIONS_MAX: usize = 64;

/// Slack on top of the node's own timeouts before an HTTP request is
/// answered `504 Timeout` by this layer (the node answers first, always:
/// this only bounds a node that stopped answering).
pub const ANSWER_SLACK_MS: u64 = 5_000;

/// The routes: method, path (OpenAPI syntax), and what serves it. The
/// router is built from this table, and a test checks that the OpenAPI
/// document has exactly these operations.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("PUT", "/v1/actors/{actor}"),
    ("POST", "/v1/actors/{actor}/commands"),
    ("POST", "/v1/actors/{actor}/queries"),
    ("POST", "/v1/promote"),
    ("GET", "/v1/members"),
    ("POST", "/v1/members"),
    ("GET", "/v1/auth"),
    ("POST", "/v1/auth"),
    ("GET", "/v1/audit"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/v1/cluster"),
    ("GET", "/"),
];

/// How long the cluster view waits for each member's status.
pub const CLUSTER_STATUS_TIMEOUT_MS: u64 = 1_000;

/// An outcome, as a JSON document.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutcomeJson {
    /// `ok`, `refused`, `trapped`, `out_of_fuel`, `memory_limit`,
    /// `deploy_refused` or `denied` (an unknown actor is a 404 problem).
    pub outcome: String,
    /// The machine's answer (`ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub value: Option<serde_json::Value>,
    /// The machine's refusal code (`refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What happened, in words (every outcome but `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A write's answer.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteJson {
    /// What the write did (`majority`: committed and applied).
    #[serde(flatten)]
    pub outcome: Option<OutcomeJson>,
    /// `written` (committed, with its outcome) or `accepted` (the
    /// `leader` concern: durable on the leader, not yet committed).
    pub state: String,
    /// The entry's term (with `index`, a session token for reads).
    pub term: u64,
    /// The entry's index.
    pub index: u64,
}

/// `?concern=` of a command.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandParams {
    /// `majority` (default: answered once committed, with the outcome) or
    /// `leader` (answered at the leader's fsync; may be lost on failover).
    pub concern: Option<String>,
}

/// Most bytes of an `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// `?level=` of a query.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueryParams {
    /// `linearizable` (default), `lease`, `any`, `session:TERM:INDEX`,
    /// `bounded:ENTRIES` or `bounded-ms:MS`.
    pub level: Option<String>,
}

/// A query's answer.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadJson {
    /// What the machine answered.
    #[serde(flatten)]
    pub outcome: OutcomeJson,
    /// The applied index the answer reflects.
    pub applied_index: u64,
}

/// A switchover (or, with `force`, a forced promotion).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromoteJson {
    /// The member that is to lead.
    pub node: u64,
    /// Forced promotion of a group that lost its majority (sent to that
    /// node itself); writes it lacks are lost.
    #[serde(default)]
    pub force: bool,
}

/// A switchover under way.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromotingJson {
    /// The member that is to lead.
    pub node: u64,
    /// The term of the leader handing over.
    pub term: u64,
}

/// `?limit=` of the audit trail.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Most records, newest first (default 100; at most
    /// `AUDIT_RECORDS_MAX`).
    pub limit: Option<u32>,
}
