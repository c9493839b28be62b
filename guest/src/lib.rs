//! Guest SDK for Understudy machines.
//!
//! A machine is a plain Rust type that implements [`Machine`]: typed commands
//! in, typed responses out, all state kept in the host's key-value store
//! through [`kv`]. [`export_machine!`] turns it into the exports of the
//! `understudy:machine` WIT world (see `wit/machine.wit`).
//!
//! ```ignore
//! use understudy_guest::{Context, Machine, MachineError, kv};
//!
//! struct Counter;
//! impl Machine for Counter {
//!     type Command = i64;            // add this much
//!     type Response = i64;           // the new value
//!     type Query = ();
//!     type QueryResponse = i64;
//!     fn apply(_ctx: &Context, delta: i64) -> Result<i64, MachineError> {
//!         let value = kv::get::<i64>("value")?.unwrap_or(0) + delta;
//!         kv::put("value", &value)?;
//!         Ok(value)
//!     }
//!     fn query(_: ()) -> Result<i64, MachineError> {
//!         Ok(kv::get::<i64>("value")?.unwrap_or(0))
//!     }
//! }
//! understudy_guest::export_machine!(Counter);
//! ```
//!
//! Commands, responses and stored values are CBOR (serde_cbor), the same
//! encoding the host and its CLI use, so a CLI user can send JSON and the
//! machine sees the equivalent typed value.
//!
//! Determinism: a machine runs on every replica and must give the same result
//! everywhere. Use [`Context::now_ms`] and [`Context::rng`] (or [`now`] and
//! [`random`]) for time and randomness; they come from the log entry. Do not
//! keep state in statics: the commands of one log window (64 entries) share
//! an instance, on every replica alike, but queries, deploys and the next
//! window start from a fresh one, so only `kv` state lasts.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "machine",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "understudy_guest::bindings",
    });
}

use bindings::understudy::machine::types as wit;

/// The entry context of the command being applied: identical on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// Log index of the entry.
    pub index: u64,
    /// Term in which the leader proposed it.
    pub term: u64,
    /// Leader's clock (ms since the Unix epoch) when proposed; never decreases.
    pub timestamp_ms: u64,
    /// Random seed chosen by the leader for this entry.
    pub seed: u64,
}

impl Context {
    /// Deterministic "current time" in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// A deterministic random number generator seeded from the entry.
    pub fn rng(&self) -> Rng {
        Rng::new(self.seed ^ self.index.rotate_left(32))
    }
}

impl From<wit::Context> for Context {
    fn from(c: wit::Context) -> Self {
        Context {
            index: c.index,
            term: c.term,
            timestamp_ms: c.timestamp_ms,
            seed: c.seed,
        }
    }
}

/// SplitMix64: small, fast and fully specified, so every replica draws the
/// same sequence from the same seed.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(Context, Rng)>> = const { RefCell::new(None) };
}

/// The context of the command being applied. Panics (a trap: a deterministic
/// error result) when called outside `init`/`apply`, e.g. from a query.
pub fn context() -> Context {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|(ctx, _)| *ctx)
            .expect("understudy_guest::context() is only available in init/apply")
    })
}

/// Deterministic time of the current entry (ms since the Unix epoch).
pub fn now() -> u64 {
    context().timestamp_ms
}

/// The next deterministic random number of the current entry.
pub fn random() -> u64 {
    CURRENT.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|(_, rng)| rng.next_u64())
            .expect("understudy_guest::random() is only available in init/apply")
    })
}

/// A refusal returned by a machine: deterministic, committed as the entry's
/// result, and its key-value writes are rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineError {
    /// Short machine-readable code, e.g. `insufficient-funds`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl MachineError {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        MachineError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for MachineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<MachineError> for wit::MachineError {
    fn from(e: MachineError) -> Self {
        wit::MachineError {
            code: e.code,
            message: e.message,
        }
    }
}

/// A deterministic state machine. Implement it on a unit struct and export it
/// with [`export_machine!`]. All state lives in [`kv`].
pub trait Machine {
    /// A write, decoded from the command's CBOR bytes.
    type Command: DeserializeOwned;
    /// The response to a write, encoded as CBOR for the client.
    type Response: Serialize;
    /// A read request, decoded from CBOR.
    type Query: DeserializeOwned;
    /// The answer to a read, encoded as CBOR.
    type QueryResponse: Serialize;

    /// Initialise state when the machine is deployed as an actor.
    fn init(_ctx: &Context) -> Result<(), MachineError> {
        Ok(())
    }

    /// Apply one command.
    fn apply(ctx: &Context, command: Self::Command) -> Result<Self::Response, MachineError>;

    /// Answer a read from the current state; must not write.
    fn query(request: Self::Query) -> Result<Self::QueryResponse, MachineError>;
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, MachineError> {
    serde_cbor::from_slice(bytes)
        .map_err(|e| MachineError::new("bad-request", format!("cannot decode {what}: {e}")))
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, MachineError> {
    serde_cbor::to_vec(value)
        .map_err(|e| MachineError::new("encode", format!("cannot encode {what}: {e}")))
}

fn with_context<R>(ctx: Context, f: impl FnOnce(&Context) -> R) -> R {
    CURRENT.with(|c| *c.borrow_mut() = Some((ctx, ctx.rng())));
    let out = f(&ctx);
    CURRENT.with(|c| *c.borrow_mut() = None);
    out
}

/// Glue used by [`export_machine!`]; not part of the stable API.
#[doc(hidden)]
pub mod __rt {
    use super::*;

    pub fn init<M: Machine>(ctx: wit::Context) -> Result<(), wit::MachineError> {
        with_context(ctx.into(), |ctx| M::init(ctx)).map_err(Into::into)
    }

    pub fn apply<M: Machine>(
        ctx: wit::Context,
        command: Vec<u8>,
    ) -> Result<Vec<u8>, wit::MachineError> {
        with_context(ctx.into(), |ctx| {
            let command = decode::<M::Command>("command", &command)?;
            let response = M::apply(ctx, command)?;
            encode("response", &response)
        })
        .map_err(Into::into)
    }

    pub fn query<M: Machine>(request: Vec<u8>) -> Result<Vec<u8>, wit::MachineError> {
        let run = || {
            let request = decode::<M::Query>("query", &request)?;
            let response = M::query(request)?;
            encode("query response", &response)
        };
        run().map_err(Into::into)
    }
}

/// Export a [`Machine`] implementation as the `understudy:machine` world.
#[macro_export]
macro_rules! export_machine {
    ($machine:ty) => {
        #[doc(hidden)]
        pub struct __UnderstudyExport;

        impl $crate::bindings::Guest for __UnderstudyExport {
            fn init(
                ctx: $crate::bindings::understudy::machine::types::Context,
            ) -> ::core::result::Result<(), $crate::bindings::understudy::machine::types::MachineError>
            {
                $crate::__rt::init::<$machine>(ctx)
            }
            fn apply(
                ctx: $crate::bindings::understudy::machine::types::Context,
                command: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::understudy::machine::types::MachineError,
            > {
                $crate::__rt::apply::<$machine>(ctx, command)
            }
            fn query(
                request: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::understudy::machine::types::MachineError,
            > {
                $crate::__rt::query::<$machine>(request)
            }
        }

        $crate::bindings::__export_world!(__UnderstudyExport with_types_in $crate::bindings);
    };
}

/// Typed access to the actor's key-value state (values are CBOR).
pub mod kv {
    use super::*;
    use crate::bindings::understudy::machine::kv as raw;

    /// The value under `key`, decoded; `None` if absent.
    pub fn get<T: DeserializeOwned>(key: impl AsRef<[u8]>) -> Result<Option<T>, MachineError> {
        match raw::get(key.as_ref()) {
            None => Ok(None),
            Some(bytes) => decode("stored value", &bytes).map(Some),
        }
    }

    /// Store `value` (CBOR-encoded) under `key`.
    pub fn put<T: Serialize>(key: impl AsRef<[u8]>, value: &T) -> Result<(), MachineError> {
        raw::put(key.as_ref(), &encode("stored value", value)?);
        Ok(())
    }

    /// Remove `key`; returns whether it existed.
    pub fn delete(key: impl AsRef<[u8]>) -> bool {
        raw::delete(key.as_ref())
    }

    /// Raw bytes under `key`.
    pub fn get_raw(key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        raw::get(key.as_ref())
    }

    /// Store raw bytes under `key`.
    pub fn put_raw(key: impl AsRef<[u8]>, value: &[u8]) {
        raw::put(key.as_ref(), value)
    }

    /// Up to `limit` decoded pairs with `start <= key < end` in key order.
    pub fn range<T: DeserializeOwned>(
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, T)>, MachineError> {
        raw::range(start.as_ref(), end, limit)
            .into_iter()
            .map(|(k, v)| Ok((k, decode("stored value", &v)?)))
            .collect()
    }

    /// The smallest key greater than every key that starts with `prefix`:
    /// the `end` bound of a prefix scan. `None` if there is none (all 0xff).
    pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }
}

/// Host logging, used by [`log!`].
pub mod log {
    pub use crate::bindings::understudy::machine::log::Level;

    /// Write one message to the host's log.
    pub fn write(level: Level, message: &str) {
        crate::bindings::understudy::machine::log::write(level, message)
    }
}

/// `log!(info, "transferred {} from {}", amount, from)` writes to the host log.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::write($crate::__level!($level), &::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __level {
    (trace) => {
        $crate::log::Level::Trace
    };
    (debug) => {
        $crate::log::Level::Debug
    };
    (info) => {
        $crate::log::Level::Info
    };
    (warn) => {
        $crate::log::Level::Warn
    };
    (error) => {
        $crate::log::Level::Error
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_a_pure_function_of_the_seed() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn prefix_end_bounds_exactly_the_prefix() {
        assert_eq!(kv::prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(kv::prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(kv::prefix_end(&[0xff, 0xff]), None);
    }
}
