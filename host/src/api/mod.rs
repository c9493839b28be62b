//! The actor message API (protocol 1): what clients send to a node and what they get
//! back, plus the Rust [`client::Client`].
//!
//! Every frame is `{ v, id, body }`: `v` is the protocol version (a node
//! refuses a newer one with [`ErrorCode::UnsupportedVersion`]), `id` pairs a
//! response with its request (requests may be pipelined and answered out of
//! order), `body` a [`Request`] or [`Response`].

pub mod client;

use crate::auth::AuthChange;
use crate::replication::Role;
use crate::types::{ClientTag, Index, NodeId, Outcome, Term};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
pub use understudy_core::membership::{MemberAddrs, Membership, MembershipChange};

/// The answer vocabulary lives in the core, where the node's decisions
/// ([`understudy_core::node`]) use it too; the wire format is theirs.
pub use understudy_core::client::{ApiError, ErrorCode, ReadLevel, WriteConcern};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;

/// One frame on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frame<T> {
    /// Protocol version.
    pub v: u16,
    /// Request id, echoed in the response. 0 is for connection-level errors.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// A client request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Deploy a machine as an actor (through the log).
    Deploy {
        /// Actor name.
        actor: String,
        /// Component or core module bytes.
        wasm: ByteBuf,
    },
    /// Send a command to an actor (through the log).
    Command {
        /// Actor name.
        actor: String,
        /// CBOR command.
        command: ByteBuf,
        /// Exactly-once tag.
        client: Option<ClientTag>,
        /// Write concern.
        concern: WriteConcern,
    },
    /// Read from an actor's applied state.
    Query {
        /// Actor name.
        actor: String,
        /// CBOR request.
        request: ByteBuf,
        /// Consistency level.
        #[serde(default)]
        level: ReadLevel,
    },
    /// Node status.
    Status,
    /// Manual switchover: the leader brings `node` up to date, stops taking
    /// writes, and hands leadership over (in a new term). With `force`,
    /// sent to `node` itself: for a group that lost its majority, `node`
    /// leads alone, by a configuration of itself only that it writes to
    /// its log (the group grows back with `member add`) — writes it lacks
    /// are lost.
    Promote {
        /// The member that is to lead.
        node: NodeId,
        /// The operator's decision for a lost majority.
        #[serde(default)]
        force: bool,
    },
    /// Prove who this connection is with a token (answered
    /// `Authenticated`); later requests on it act as that user.
    Authenticate {
        /// The token (`ust_<id>_<secret>`).
        token: String,
    },
    /// Change the auth state (through the log) or show it (admin).
    Auth(AuthRequest),
    /// The audit trail, newest first (admin).
    Audit {
        /// Most records to return (at most `AUDIT_RECORDS_MAX`).
        limit: u32,
    },
    /// Change the group's configuration through its leader (admin):
    /// answered `Written` once the change is done, with the index of the
    /// configuration that completed it. Exactly-once by its tag like a
    /// command. Removing (or replacing, or demoting) the leader makes it
    /// hand over first: the answer is `NotLeader` naming the new leader,
    /// where the client retries.
    Membership {
        /// The change.
        change: MembershipChange,
        /// Exactly-once tag.
        #[serde(default)]
        client: Option<ClientTag>,
        /// Sent by a node that asks to join (`node --join`): what it must
        /// share with the group, checked before anything changes.
        #[serde(default)]
        joining: Option<Joining>,
    },
    /// An online backup of the node asked (admin): see [`BackupRequest`].
    Backup(BackupRequest),
}

/// The steps of an online backup. `Seal` (to the leader) makes every write
/// acknowledged so far reach a member's durable state: that state moves
/// only at a run window's end (`RUN_WINDOW` entries), so the leader appends
/// no-op entries up to the next one and answers once they are applied,
/// with its last index before them. `Begin` has the node asked write a
/// snapshot of its durable state once it reaches that index (from one
/// read transaction, on the snapshot thread: the group keeps serving) into
/// a staging directory of its own; the client then fetches the snapshot's
/// chunks one request at a time and ends the backup, which removes the
/// staging directory. A node keeps at most `BACKUPS_STAGED_MAX` staged
/// backups (a new one removes the least recently used) and removes one
/// nobody asked a chunk of for `BACKUP_IDLE_MS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupRequest {
    /// Close the leader's current run window (answered `BackupSealed`).
    Seal,
    /// Write a snapshot to back up (answered `BackupBegun`).
    Begin {
        /// Wait (at most `BACKUP_CATCH_UP_MS`) until this node's durable
        /// state is at or past this index (from `BackupSealed`; 0: now).
        #[serde(default)]
        at_least: Index,
    },
    /// One chunk of a begun backup (answered `BackupChunk`).
    Chunk {
        /// The backup (from `BackupBegun`).
        id: u64,
        /// Chunk number, from 0.
        seq: u64,
    },
    /// The client has every chunk: the node removes the staged backup
    /// (answered `BackupEnded`).
    End {
        /// The backup.
        id: u64,
    },
}

/// A read level as the CLI and the HTTP API write it: `linearizable`,
/// `lease`, `any`, `session:TERM:INDEX`, `bounded:ENTRIES` or
/// `bounded-ms:MS`.
pub fn parse_read_level(s: &str) -> Result<ReadLevel, String> {
    let num = |x: &str| {
        x.parse::<u64>()
            .map_err(|e| format!("{x:?} in read level {s:?}: {e}"))
    };
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        ["linearizable"] => Ok(ReadLevel::Linearizable),
        ["lease"] => Ok(ReadLevel::Lease),
        ["any"] => Ok(ReadLevel::Any),
        ["session", term, index] => Ok(ReadLevel::Session {
            term: num(term)?,
            index: num(index)?,
        }),
        ["bounded", n] => Ok(ReadLevel::Bounded {
            max_lag_entries: Some(num(n)?),
            max_lag_ms: None,
        }),
        ["bounded-ms", n] => Ok(ReadLevel::Bounded {
            max_lag_entries: None,
            max_lag_ms: Some(num(n)?),
        }),
        _ => Err(format!(
            "expected linearizable, lease, any, session:TERM:INDEX, bounded:ENTRIES or bounded-ms:MS; got {s:?}"
        )),
    }
}

/// What a node that asks to join tells the group about itself, so that a
/// node of another cluster, or one whose peer protocol the group does not
/// speak, is refused at once instead of being added as a learner that can
/// never connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joining {
    /// Its cluster id (`--cluster-id`).
    pub cluster_id: String,
    /// The peer protocol version it speaks.
    pub peer_protocol: u16,
}

/// Longest token text a node reads, in bytes.
pub const TOKEN_TEXT_BYTES_MAX: usize = 256;

/// What an `Auth` request asks (see [`crate::auth`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Start checking requests.
    Enable,
    /// Stop checking requests.
    Disable,
    /// Add a user with roles (or replace its roles).
    UserAdd {
        /// User name.
        name: String,
        /// Its roles.
        roles: Vec<String>,
    },
    /// Remove a user and its tokens.
    UserRemove {
        /// User name.
        name: String,
    },
    /// Give a role a permission (`admin`, `write:<pattern>`, `read:<pattern>`).
    RoleGrant {
        /// Role name.
        role: String,
        /// The permission.
        permission: String,
    },
    /// Take a permission from a role.
    RoleRevoke {
        /// Role name.
        role: String,
        /// The permission.
        permission: String,
    },
    /// Make a token for a user; the answer carries its text, once.
    TokenCreate {
        /// The user.
        user: String,
        /// Lifetime in ms (0: until revoked).
        ttl_ms: u64,
    },
    /// Revoke a token by its id.
    TokenRevoke {
        /// Token id.
        id: String,
    },
    /// Stop accepting a client certificate (BLAKE3 of its DER).
    CertRevoke {
        /// The fingerprint.
        fingerprint: ByteBuf,
    },
    /// Allow a module hash at deploy (turns the allow-list on).
    ModuleAllow {
        /// Component hash.
        hash: ByteBuf,
    },
    /// Turn the module allow-list off.
    ModulesAny,
    /// Show users, roles, token ids and the allow-list.
    Show,
}

impl AuthRequest {
    /// The log change this asks for at `now_ms`, and for a new token the
    /// text to hand back; `None` for `Show`. Names and permissions are
    /// checked here so that a malformed request never reaches the log.
    pub fn to_change(&self, now_ms: u64) -> Result<Option<(AuthChange, Option<String>)>, ApiError> {
        use crate::auth::{NAME_BYTES_MAX, Permission, ROLES_PER_USER_MAX};
        let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
        let name = |what: &str, n: &str| {
            if n.is_empty() || n.len() > NAME_BYTES_MAX {
                Err(bad(format!(
                    "bad {what} name {n:?}: 1 to NAME_BYTES_MAX = {NAME_BYTES_MAX} bytes"
                )))
            } else {
                Ok(n.to_string())
            }
        };
        let change = match self {
            AuthRequest::Show => return Ok(None),
            AuthRequest::Enable => AuthChange::Enable,
            AuthRequest::Disable => AuthChange::Disable,
            AuthRequest::UserAdd { name: n, roles } => {
                if roles.len() > ROLES_PER_USER_MAX {
                    return Err(bad(format!(
                        "{} roles: at most ROLES_PER_USER_MAX = {ROLES_PER_USER_MAX}",
                        roles.len()
                    )));
                }
                AuthChange::UserAdd {
                    name: name("user", n)?,
                    roles: roles
                        .iter()
                        .map(|r| name("role", r))
                        .collect::<Result<_, _>>()?,
                }
            }
            AuthRequest::UserRemove { name: n } => AuthChange::UserRemove {
                name: name("user", n)?,
            },
            AuthRequest::RoleGrant { role, permission } => AuthChange::RoleGrant {
                role: name("role", role)?,
                permission: Permission::parse(permission).map_err(bad)?,
            },
            AuthRequest::RoleRevoke { role, permission } => AuthChange::RoleRevoke {
                role: name("role", role)?,
                permission: Permission::parse(permission).map_err(bad)?,
            },
            AuthRequest::TokenCreate { user, ttl_ms } => {
                let (id, text, hash) = crate::access::new_token();
                let token = crate::auth::Token {
                    user: name("user", user)?,
                    hash,
                    expires_ms: if *ttl_ms == 0 {
                        0
                    } else {
                        now_ms.saturating_add(*ttl_ms)
                    },
                };
                return Ok(Some((AuthChange::TokenCreate { id, token }, Some(text))));
            }
            AuthRequest::TokenRevoke { id } => AuthChange::TokenRevoke {
                id: name("token", id)?,
            },
            AuthRequest::CertRevoke { fingerprint } => AuthChange::CertRevoke {
                fingerprint: fingerprint.to_vec(),
            },
            AuthRequest::ModuleAllow { hash } => AuthChange::ModuleAllow {
                hash: hash.to_vec(),
            },
            AuthRequest::ModulesAny => AuthChange::ModulesAny,
        };
        Ok(Some((change, None)))
    }
}

impl Request {
    /// The door check every request passes before it reaches the log or a
    /// machine: names and sizes within [`crate::limits`]. What it refuses
    /// never costs the group anything.
    pub fn admit(&self) -> Result<(), ApiError> {
        use crate::limits::{COMMAND_BYTES_MAX, MODULE_BYTES_MAX, QUERY_BYTES_MAX, check};
        let too_large =
            |e: crate::limits::OverLimit| ApiError::new(ErrorCode::TooLarge, e.to_string());
        let bad_name =
            |e: crate::types::BadActorName| ApiError::new(ErrorCode::BadRequest, e.to_string());
        match self {
            Request::Command { actor, command, .. } => {
                crate::types::validate_actor_name(actor).map_err(bad_name)?;
                check(
                    "the command",
                    command.len(),
                    "COMMAND_BYTES_MAX",
                    COMMAND_BYTES_MAX,
                )
                .map_err(too_large)
            }
            Request::Query { actor, request, .. } => {
                crate::types::validate_actor_name(actor).map_err(bad_name)?;
                check(
                    "the query",
                    request.len(),
                    "QUERY_BYTES_MAX",
                    QUERY_BYTES_MAX,
                )
                .map_err(too_large)
            }
            Request::Deploy { actor, wasm } => {
                crate::types::validate_actor_name(actor).map_err(bad_name)?;
                check(
                    "the module",
                    wasm.len(),
                    "MODULE_BYTES_MAX",
                    MODULE_BYTES_MAX,
                )
                .map_err(too_large)
            }
            Request::Authenticate { token } => check(
                "the token",
                token.len(),
                "TOKEN_TEXT_BYTES_MAX",
                TOKEN_TEXT_BYTES_MAX,
            )
            .map_err(too_large),
            Request::Audit { limit } => check(
                "the audit limit",
                *limit as usize,
                "AUDIT_RECORDS_MAX",
                crate::access::AUDIT_RECORDS_MAX as usize,
            )
            .map_err(too_large),
            Request::Status
            | Request::Promote { .. }
            | Request::Auth(_)
            | Request::Membership { .. }
            | Request::Backup(_) => Ok(()),
        }
    }
}

/// An actor as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInfo {
    /// Its name.
    pub name: String,
    /// The BLAKE3 hash of its module (hex).
    pub module: String,
    /// The index of the deploy entry that put it there.
    pub deployed_at: Index,
}

/// Node status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Node id.
    pub node_id: NodeId,
    /// Cluster id.
    pub cluster_id: String,
    /// Role.
    pub role: Role,
    /// Term.
    pub term: Term,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Last log index.
    pub last_index: Index,
    /// First index still in the log (earlier ones are compacted).
    #[serde(default)]
    pub log_first_index: Index,
    /// Commit index.
    pub commit_index: Index,
    /// Applied index.
    pub applied_index: Index,
    /// State digest at the applied index (hex).
    pub digest: String,
    /// Deployed actors.
    pub actors: Vec<String>,
    /// Deployed actors with their module hashes and deploy indexes.
    #[serde(default)]
    pub actor_modules: Vec<ActorInfo>,
    /// Writes waiting for the log or the applier.
    pub pending_writes: usize,
    /// Vote in the current term.
    #[serde(default)]
    pub vote: Option<NodeId>,
    /// Milliseconds since the leader was last heard from (0 on the leader).
    #[serde(default)]
    pub leader_heard_ms_ago: Option<u64>,
    /// The leader's client address, when known.
    #[serde(default)]
    pub leader_address: Option<String>,
    /// On the leader: each follower's replication state.
    #[serde(default)]
    pub followers: Vec<crate::replication::FollowerStatus>,
    /// Why this node serves no reads, if it is quarantined (a determinism
    /// alarm) or halted (its state damaged at rest, applying failed).
    #[serde(default)]
    pub quarantined: Option<String>,
    /// A snapshot being received, if any.
    #[serde(default)]
    pub snapshot_in: Option<SnapshotProgress>,
    /// The last leaders this node saw take over, newest last (at most
    /// `LEADER_CHANGES_KEPT`): elections and switchovers.
    #[serde(default)]
    pub leader_changes: Vec<LeaderChange>,
    /// Writes this node answered in each of the last seconds (at most
    /// `crate::metrics::RECENT_SECONDS`), with their p99 latency: on the
    /// leader, the group's write rate.
    #[serde(default)]
    pub recent_writes: Vec<WritesSecond>,
    /// While this node is recovering from a lost data directory: the index
    /// its durable log must reach before it campaigns again (it votes, once
    /// it has heard enough peers, only for logs at least that up-to-date).
    #[serde(default)]
    pub recovering_until: Option<Index>,
    /// A host fault this node has (a full disk, an I/O error): it stepped
    /// down and refuses reads and writes until it clears.
    #[serde(default)]
    pub fault: Option<String>,
    /// Client addresses of the members this node knows (itself included).
    #[serde(default)]
    pub client_addresses: std::collections::BTreeMap<NodeId, String>,
    /// The configuration in effect on this node (the last in its log).
    #[serde(default)]
    pub membership: Membership,
    /// Its index (0: the bootstrap member list, not yet in the log).
    #[serde(default)]
    pub membership_index: Index,
}

/// Progress of a snapshot a follower receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// The applied index the snapshot is the state of.
    pub index: Index,
    /// Chunks received and verified.
    pub chunks_done: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// Bytes in all.
    pub bytes: u64,
}

/// A leader this node saw take over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChange {
    /// When this node saw it (ms since the Unix epoch, this node's clock).
    pub at_ms: u64,
    /// The new leader's term.
    pub term: Term,
    /// The new leader.
    pub leader: NodeId,
}

/// Writes answered in one second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritesSecond {
    /// The second (since the Unix epoch, the node's clock).
    pub at_s: u64,
    /// Writes answered in it.
    pub writes: u64,
    /// Their 99th percentile latency, µs (the upper bound of its bucket).
    pub p99_us: u64,
}

/// Most leader changes a node keeps for its status.
pub const LEADER_CHANGES_KEPT: usize = 20;

/// A response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A write (command or deploy) was committed and applied.
    Written {
        /// Its deterministic result.
        outcome: Outcome,
        /// Term of the entry (session token).
        term: Term,
        /// Index of the entry (session token).
        index: Index,
    },
    /// A write with the `leader` concern is durable on the leader; it is
    /// not yet committed and may be lost on failover. Its outcome can be
    /// read with a `session` read of this token.
    Accepted {
        /// Term of the entry.
        term: Term,
        /// Index of the entry.
        index: Index,
    },
    /// A query answer.
    Read {
        /// The machine's answer.
        outcome: Outcome,
        /// Applied index the answer reflects.
        applied_index: Index,
    },
    /// Status.
    Status(Box<Status>),
    /// A switchover has started; watch `leader` in the status.
    Promoting {
        /// The member that is to lead.
        node: NodeId,
        /// The term of the leader handing over.
        term: Term,
    },
    /// This connection now acts as this user.
    Authenticated {
        /// The user.
        user: String,
    },
    /// A token was made; its text is shown this once.
    TokenCreated {
        /// Its id (to revoke it).
        id: String,
        /// The token to hand to its user.
        token: String,
        /// Term of the entry.
        term: Term,
        /// Index of the entry (it is valid on a node once applied there).
        index: Index,
    },
    /// The auth state (token hashes left out).
    AuthState(Box<crate::auth::AuthState>),
    /// The audit trail, newest first.
    Audit(Vec<crate::access::AuditRecord>),
    /// Every write acknowledged before the seal is at or below `index`,
    /// and the log has reached the run window end past it.
    BackupSealed {
        /// The leader's last index when the seal arrived.
        index: Index,
    },
    /// A backup's snapshot is staged: fetch its `meta.chunks` chunks.
    BackupBegun {
        /// The backup's id on this node.
        id: u64,
        /// The node that wrote it.
        node_id: NodeId,
        /// Its group.
        cluster_id: String,
        /// When it was written (ms since the Unix epoch).
        taken_at_ms: u64,
        /// What it is: index, term, digest, chunk checksums, configuration.
        meta: Box<crate::storage::SnapshotMeta>,
    },
    /// One chunk of a staged backup.
    BackupChunk {
        /// Its bytes (checked by the client against the meta's checksum).
        data: ByteBuf,
    },
    /// The staged backup is removed.
    BackupEnded,
    /// An error.
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{COMMAND_BYTES_MAX, MODULE_BYTES_MAX, QUERY_BYTES_MAX};

    #[test]
    fn a_token_and_an_audit_limit_are_admitted_at_and_refused_one_past() {
        let token = |n: usize| Request::Authenticate {
            token: "t".repeat(n),
        };
        assert!(token(TOKEN_TEXT_BYTES_MAX).admit().is_ok());
        let err = token(TOKEN_TEXT_BYTES_MAX + 1).admit().unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(
            err.message.contains("TOKEN_TEXT_BYTES_MAX"),
            "{}",
            err.message
        );
        let max = crate::access::AUDIT_RECORDS_MAX as u32;
        assert!(Request::Audit { limit: max }.admit().is_ok());
        assert!(Request::Audit { limit: max + 1 }.admit().is_err());
        // A malformed auth request never reaches the log.
        let roles = |n: usize| AuthRequest::UserAdd {
            name: "u".into(),
            roles: (0..n).map(|i| format!("r{i}")).collect(),
        };
        let max = crate::auth::ROLES_PER_USER_MAX;
        assert!(roles(max).to_change(0).is_ok());
        assert!(roles(max + 1).to_change(0).is_err());
        let bad = AuthRequest::RoleGrant {
            role: "r".into(),
            permission: "delete:*".into(),
        };
        assert_eq!(bad.to_change(0).unwrap_err().code, ErrorCode::BadRequest);
    }

    fn command(actor: &str, len: usize) -> Request {
        Request::Command {
            actor: actor.into(),
            command: ByteBuf::from(vec![0u8; len]),
            client: None,
            concern: WriteConcern::Majority,
        }
    }

    fn query(actor: &str, len: usize) -> Request {
        Request::Query {
            actor: actor.into(),
            request: ByteBuf::from(vec![0u8; len]),
            level: ReadLevel::Any,
        }
    }

    fn deploy(actor: &str, len: usize) -> Request {
        Request::Deploy {
            actor: actor.into(),
            wasm: ByteBuf::from(vec![0u8; len]),
        }
    }

    #[test]
    fn the_door_admits_every_limit_and_refuses_one_past_it_by_name() {
        for (at, past, name) in [
            (
                command("kv", COMMAND_BYTES_MAX),
                command("kv", COMMAND_BYTES_MAX + 1),
                "COMMAND_BYTES_MAX",
            ),
            (
                query("kv", QUERY_BYTES_MAX),
                query("kv", QUERY_BYTES_MAX + 1),
                "QUERY_BYTES_MAX",
            ),
            (
                deploy("kv", MODULE_BYTES_MAX),
                deploy("kv", MODULE_BYTES_MAX + 1),
                "MODULE_BYTES_MAX",
            ),
        ] {
            assert_eq!(at.admit(), Ok(()), "{name}");
            let e = past.admit().unwrap_err();
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains(name), "{}", e.message);
        }
        let longest = "a".repeat(crate::types::ACTOR_NAME_MAX_BYTES);
        assert_eq!(command(&longest, 1).admit(), Ok(()));
        for bad in [
            String::new(),
            format!("{longest}a"),
            "Kv".into(),
            "1kv".into(),
            "k v".into(),
        ] {
            for r in [command(&bad, 1), query(&bad, 1), deploy(&bad, 1)] {
                assert_eq!(
                    r.admit().unwrap_err().code,
                    ErrorCode::BadRequest,
                    "{bad:?}"
                );
            }
        }
    }
}
