//! Every limit on what a client, a peer or a machine can make a node hold,
//! in one place, with its unit in its name.
//!
//! Two kinds:
//! - *door limits* are checked when a request arrives; past one the
//!   sender gets [`crate::api::ErrorCode::TooLarge`] (or `BadRequest`)
//!   with a message naming the limit and its value, and nothing reaches
//!   the log;
//! - *apply limits* are checked while an entry is applied, from the
//!   entry's content alone, so every replica reaches the same verdict:
//!   past one, the entry is committed as a deterministic refusal
//!   (`Outcome::Trapped` with the limit's name, or `DeployRefused`) and
//!   its writes are dropped. Nothing an entry contains can halt a node
//!   (BRIEF invariant 9).
//!
//! Together they keep every log entry smaller than one peer frame
//! ([`crate::net::FRAME_BYTES_MAX`]): a command entry carries at most
//! [`COMMAND_BYTES_MAX`] plus (row kind) [`WRITE_SET_BYTES_MAX`] and
//! [`RESPONSE_BYTES_MAX`]; a deploy at most [`MODULE_BYTES_MAX`] plus its
//! init's write-set. `entries_fit_in_a_frame` checks that sum at compile
//! time.
//!
//! These values are part of the log format and the peer protocol: a
//! machine's outcome depends on them, so every member of a group must use
//! the same ones (they are constants, not settings, for that reason).

pub use crate::types::ACTOR_NAME_MAX_BYTES;

/// Longest key LMDB stores (its compile-time `MDB_MAXKEYSIZE`; heed's
/// default build). A longer key fails the write transaction.
pub const LMDB_KEY_BYTES_MAX: usize = 511;

/// Longest key a machine may read, write, delete or start a range at: what
/// is left of an LMDB key after the actor prefix (one length byte and an
/// actor name of up to [`ACTOR_NAME_MAX_BYTES`]). Apply limit: past it the
/// call traps with `kv-too-large`.
pub const KEY_BYTES_MAX: usize = LMDB_KEY_BYTES_MAX - 1 - ACTOR_NAME_MAX_BYTES;

/// Largest value a machine may write (apply limit: `kv-too-large`).
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Most bytes (keys plus values) one command's or init's writes may hold
/// when it ends (apply limit: the call traps with `write-set-too-large`).
pub const WRITE_SET_BYTES_MAX: usize = 8 << 20;

/// Largest answer a machine may return from `apply` or `query`, and the
/// largest code plus message of a refusal (apply limit: the outcome
/// becomes `Trapped { trap: "response-too-large" }`).
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Largest command a client may send (door limit).
pub const COMMAND_BYTES_MAX: usize = 1 << 20;

/// Largest query request a client may send (door limit).
pub const QUERY_BYTES_MAX: usize = 1 << 20;

/// Largest module a client may deploy, as sent and as the component it
/// becomes (door limit; checked again at apply: `DeployRefused`).
pub const MODULE_BYTES_MAX: usize = 8 << 20;

/// Largest body of one function in a deployed module, in bytes of its
/// WebAssembly encoding (door and apply limit: `TooLarge` at the door,
/// `DeployRefused` at apply). Cranelift's compile time grows about with
/// the square of a function's size (measured, debug-profile host with
/// optimized dependencies: a 0.4 MB function 3.6 s, 1.6 MB 27–46 s); at
/// this bound a module of [`MODULE_BYTES_MAX`] of the worst code measured
/// compiles in seconds (40 functions of 97 KB: 1.5 s). The examples'
/// largest function is 6 KB.
pub const FUNCTION_BODY_BYTES_MAX: usize = 128 << 10;

/// Queries a node holds while its query threads run others
/// (`crate::node::query_threads`; queries never run on the applier's
/// thread, so they cannot delay writes); past it a query is refused
/// `Overloaded`. At least one connection's in-flight
/// limit, so a client that pipelines is never refused by it. A query that
/// waited past `read_timeout_ms` is answered `Timeout` when its turn comes
/// (a query runs for at most its fuel: about 0.3 s at the default 200 M).
pub const QUERIES_WAITING_MAX: usize = 4 * IN_FLIGHT_MAX;

/// Requests of one client connection read and not yet answered on the
/// wire (see [`crate::node::server`]).
pub const IN_FLIGHT_MAX: usize = 1024;

/// Room for an entry's framing, names, tags and context.
const ENTRY_OVERHEAD_BYTES_MAX: usize = 64 << 10;

/// The largest entry the limits above allow.
pub const ENTRY_BYTES_MAX: usize = ENTRY_OVERHEAD_BYTES_MAX
    + max(
        COMMAND_BYTES_MAX + WRITE_SET_BYTES_MAX + RESPONSE_BYTES_MAX,
        MODULE_BYTES_MAX + WRITE_SET_BYTES_MAX + RESPONSE_BYTES_MAX,
    );

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

// Every entry travels in one peer frame (an append carries at least one).
const _: () = assert!(
    ENTRY_BYTES_MAX < crate::net::FRAME_BYTES_MAX,
    "entries_fit_in_a_frame"
);
// A prefixed key always fits LMDB.
const _: () = assert!(1 + ACTOR_NAME_MAX_BYTES + KEY_BYTES_MAX <= LMDB_KEY_BYTES_MAX);

/// A door check: `Err` naming the limit if `len` is over it.
pub fn check(
    what: &str,
    len: usize,
    limit_name: &'static str,
    limit: usize,
) -> Result<(), OverLimit> {
    if len > limit {
        Err(OverLimit {
            what: what.to_string(),
            len,
            limit_name,
            limit,
        })
    } else {
        Ok(())
    }
}

/// Something over one of the limits above.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {len} bytes, over the limit {limit_name} = {limit} bytes")]
pub struct OverLimit {
    /// What was measured.
    pub what: String,
    /// Its size.
    pub len: usize,
    /// The limit's name.
    pub limit_name: &'static str,
    /// The limit.
    pub limit: usize,
}

/// A configuration's limits live with it in the core: at most
/// `MEMBERS_MAX` members (voters and learners), each address at most
/// `MEMBER_ADDRESS_BYTES_MAX` bytes (`member add` past either is refused,
/// naming it).
pub use understudy_core::membership::{MEMBER_ADDRESS_BYTES_MAX, MEMBERS_MAX};
