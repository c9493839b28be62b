//! Domain types shared by the core, storage, sandbox and API: log entries,
//! their payloads, and the deterministic outcome of applying one.

use crate::auth::{AuthChange, Principal};
use crate::membership::Membership;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A log position, 1-based; 0 means "before the first entry".
pub type Index = u64;
/// A leadership epoch; 0 means "no term yet".
pub type Term = u64;
/// A node's id inside its group.
pub type NodeId = u64;

/// The replication-log kind of a group (equal on every member).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// The log holds commands; every node runs the machine.
    #[default]
    Statement,
    /// The leader runs the machine (ahead of commit) and logs the effects;
    /// followers apply them without running guest code.
    Row,
}

/// Longest actor name accepted.
pub const ACTOR_NAME_MAX_BYTES: usize = 64;

/// Check an actor name: 1–64 bytes of `[a-z0-9_-]`, starting with a letter.
/// Names end up in key prefixes, logs and CLI output, so they stay boring.
pub fn validate_actor_name(name: &str) -> Result<(), BadActorName> {
    let ok_len = !name.is_empty() && name.len() <= ACTOR_NAME_MAX_BYTES;
    let ok_first = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(BadActorName(name.to_string()))
    }
}

/// An actor name [`validate_actor_name`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid actor name {0:?}: use 1-{ACTOR_NAME_MAX_BYTES} characters of a-z, 0-9, '-' and '_', starting with a letter"
)]
pub struct BadActorName(pub String);

/// The client tag of a write, for exactly-once application: a retried write
/// with the same `(client_id, seq)` is applied once and answered with the
/// first result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTag {
    /// Random id chosen by the client for its lifetime.
    pub client_id: u64,
    /// Per-client sequence number, starting at 1.
    pub seq: u64,
    /// Every seq below this has been answered and may be forgotten.
    pub acked_below: u64,
}

/// Facts about an entry that the leader fixes when it proposes it, so every
/// replica computes the same result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryContext {
    /// Leader's clock in ms since the Unix epoch; never decreases along the log.
    pub timestamp_ms: u64,
    /// Random seed for the machine's `random()`.
    pub seed: u64,
}

/// What a log entry asks the group to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Written by a new leader to commit an entry of its own term.
    Noop,
    /// Deploy a machine under an actor name (or replace its code).
    Deploy {
        /// Actor name.
        actor: String,
        /// The component bytes.
        wasm: ByteBuf,
        /// Who asked for it (checked against the auth state at this
        /// entry; recorded in the audit trail).
        #[serde(default)]
        by: Option<Principal>,
    },
    /// A command for an actor's machine.
    Command {
        /// Target actor.
        actor: String,
        /// Exactly-once tag, if the client sent one.
        client: Option<ClientTag>,
        /// The command bytes (CBOR, as the machine defines them).
        command: ByteBuf,
        /// Who asked for it (checked against the auth state at this entry).
        #[serde(default)]
        by: Option<Principal>,
    },
    /// A change to the auth state (see [`crate::auth`]).
    Auth {
        /// The change.
        change: AuthChange,
        /// Who asked for it.
        by: Option<Principal>,
    },
    /// An administrative action outside the state (a promotion, a forced
    /// recovery), recorded in the audit trail.
    Audit {
        /// What was done.
        action: String,
        /// Who asked for it.
        by: Option<Principal>,
    },
    /// A configuration of the group (see [`crate::membership`]): in
    /// effect on a node as soon as it is in that node's log. Applied like
    /// an audit record (it changes no machine state).
    Config(Box<Membership>),
    /// The `row` log kind: what a command or deploy did, as the leader
    /// computed it; followers apply it without running guest code.
    Effects(Box<Effects>),
}

/// Everything one command or deploy changed (row log kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    /// The deterministic outcome, answered to the client.
    pub outcome: Outcome,
    /// Key-value writes, keys prefixed by actor (`None` deletes).
    pub writes: Vec<(ByteBuf, Option<ByteBuf>)>,
    /// A new exactly-once record: this client write's outcome is
    /// remembered under its tag (absent for a retry answered from memory).
    pub session: Option<ClientTag>,
    /// A successful deploy: the actor and its component bytes.
    pub deploy: Option<(String, ByteBuf)>,
}

/// One log entry. Stored CBOR-encoded under its index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log (also the storage key; checked on read).
    pub index: Index,
    /// Term of the leader that proposed it.
    pub term: Term,
    /// Time and randomness for the machine.
    pub context: EntryContext,
    /// What to do.
    pub payload: Payload,
}

/// The committed, deterministic result of applying an entry. It is the same
/// on every replica, so it contains nothing that depends on the host (no trap
/// messages with addresses, no wall-clock durations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The machine's response bytes (CBOR).
    Ok(ByteBuf),
    /// The machine refused the command; its writes were rolled back.
    Refused {
        /// Machine-chosen code.
        code: String,
        /// Machine-chosen message.
        message: String,
    },
    /// The machine trapped (panic, unreachable, bad memory access…); writes rolled back.
    Trapped {
        /// The trap kind, e.g. `unreachable`.
        trap: String,
    },
    /// The command used up its fuel (instruction budget); writes rolled back.
    OutOfFuel,
    /// The machine tried to grow its memory past the limit; writes rolled back.
    MemoryLimit,
    /// The command was addressed to an actor that does not exist.
    NoSuchActor,
    /// A deploy was refused (the module is not a valid machine).
    DeployRefused {
        /// Why.
        reason: String,
    },
    /// Who asked may not do this (by the auth state at the entry's index):
    /// nothing was changed.
    Denied {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Whether the entry's writes were kept.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}
