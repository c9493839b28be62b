//! Host side of the `kv`, `log` and `types` interfaces: the per-call store
//! data, the memory limiter, and the host-work budget.
//!
//! Host functions charge "host units" (a fixed cost per call plus bytes
//! moved) against a per-call budget, so a guest cannot make the host do
//! unbounded work with cheap guest instructions; like fuel, the count is a
//! pure function of what the guest asked for, hence deterministic.

use super::bindings::understudy::machine::{kv, log, types};
use crate::config::SandboxLimits;
use crate::kv::StateView;
use crate::kv::{self as view, RANGE_LIMIT_MAX, WriteSet};
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX, WRITE_SET_BYTES_MAX};
use std::sync::Arc;
/// Longest log message kept.
const LOG_MESSAGE_BYTES_MAX: usize = 4 << 10;
/// Fixed host-unit cost of one kv call.
const KV_CALL_UNITS: u64 = 256;

/// A deterministic trap raised by a host function.
#[derive(Debug, thiserror::Error)]
pub enum HostTrap {
    /// `put`/`delete` during a query.
    #[error("kv write from a query; queries are read-only")]
    WriteInQuery,
    /// The call's host-work budget ran out.
    #[error("host work budget of the call exhausted")]
    HostBudget,
    /// Key or value over the size limit.
    #[error(
        "kv key or value too large (KEY_BYTES_MAX = {KEY_BYTES_MAX} bytes, \
         VALUE_BYTES_MAX = {VALUE_BYTES_MAX} bytes)"
    )]
    TooLarge,
    /// The call's writes would hold more than the write-set limit.
    #[error("the call's writes exceed WRITE_SET_BYTES_MAX = {WRITE_SET_BYTES_MAX} bytes")]
    WriteSetTooLarge,
}

impl HostTrap {
    /// Stable name, committed as part of the outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            HostTrap::WriteInQuery => "write-in-query",
            HostTrap::HostBudget => "host-budget",
            HostTrap::TooLarge => "kv-too-large",
            HostTrap::WriteSetTooLarge => "write-set-too-large",
        }
    }
}

/// Most elements a machine's table may grow to.
pub const TABLE_ELEMENTS_MAX: usize = 100_000;

/// Memory limiter that remembers that it refused, so the outcome can say so.
pub struct Limiter {
    memory_bytes_max: usize,
    /// Set when a memory growth past the limit was refused.
    pub memory_limit_hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// Store data of one call.
pub struct HostState {
    pub(super) view: Box<dyn StateView>,
    pub(super) writes: WriteSet,
    /// Bytes (keys and values) `writes` holds.
    write_bytes: usize,
    writable: bool,
    actor: Arc<str>,
    pub(super) limiter: Limiter,
    host_units_left: u64,
    pub(super) watchdog_ms: u64,
}

impl HostState {
    pub(super) fn new(
        actor: &str,
        view: Box<dyn StateView>,
        writable: bool,
        limits: &SandboxLimits,
    ) -> Self {
        HostState {
            view,
            writes: WriteSet::new(),
            write_bytes: 0,
            writable,
            actor: Arc::from(actor),
            limiter: Limiter {
                memory_bytes_max: limits.memory_bytes_max,
                memory_limit_hit: false,
            },
            host_units_left: limits.host_units_per_call,
            watchdog_ms: limits.watchdog_ms,
        }
    }

    /// Ready the store of a kept instance for its next call: the call's
    /// view in, the previous call's writes and budgets gone. Returns the
    /// view the store held.
    pub(super) fn next_call(
        &mut self,
        view: Box<dyn StateView>,
        limits: &SandboxLimits,
    ) -> Box<dyn StateView> {
        self.writes = WriteSet::new();
        self.write_bytes = 0;
        self.host_units_left = limits.host_units_per_call;
        self.limiter.memory_limit_hit = false;
        std::mem::replace(&mut self.view, view)
    }

    fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        let units = KV_CALL_UNITS + bytes as u64;
        match self.host_units_left.checked_sub(units) {
            Some(left) => {
                self.host_units_left = left;
                Ok(())
            }
            None => {
                self.host_units_left = 0;
                Err(wasmtime::Error::new(HostTrap::HostBudget))
            }
        }
    }

    /// Record `value` under `key` in the call's writes, within
    /// [`WRITE_SET_BYTES_MAX`] (counted as the write-set holds it, so
    /// rewriting one key does not add up).
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> wasmtime::Result<()> {
        let size = |k: &[u8], v: &Option<Vec<u8>>| k.len() + v.as_ref().map_or(0, Vec::len);
        let old = self.writes.get(&key).map_or(0, |v| size(&key, v));
        let new = size(&key, &value);
        let total = self.write_bytes - old + new;
        if total > WRITE_SET_BYTES_MAX {
            return Err(wasmtime::Error::new(HostTrap::WriteSetTooLarge));
        }
        self.write_bytes = total;
        self.writes.insert(key, value);
        Ok(())
    }

    fn check_writable(&self) -> wasmtime::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(wasmtime::Error::new(HostTrap::WriteInQuery))
        }
    }
}

/// Every key a machine names must fit LMDB after the actor prefix: a
/// deterministic trap (the same on every replica), never a storage error.
fn check_key(key: &[u8]) -> wasmtime::Result<()> {
    if key.len() > KEY_BYTES_MAX {
        return Err(wasmtime::Error::new(HostTrap::TooLarge));
    }
    Ok(())
}

impl types::Host for HostState {}

impl kv::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        check_key(&key)?;
        self.charge(key.len())?;
        let value = view::layered_get(&self.writes, self.view.as_ref(), &key);
        self.charge(value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        self.check_writable()?;
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(wasmtime::Error::new(HostTrap::TooLarge));
        }
        self.charge(key.len() + value.len())?;
        self.write(key, Some(value))
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<bool> {
        self.check_writable()?;
        check_key(&key)?;
        self.charge(key.len())?;
        let existed = view::layered_get(&self.writes, self.view.as_ref(), &key).is_some();
        self.write(key, None)?;
        Ok(existed)
    }

    fn range(
        &mut self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_key(&start)?;
        if let Some(end) = &end {
            check_key(end)?;
        }
        let limit = (limit as usize).min(RANGE_LIMIT_MAX);
        self.charge(start.len() + limit * 16)?;
        let pairs = view::layered_range(
            &self.writes,
            self.view.as_ref(),
            &start,
            end.as_deref(),
            limit,
        );
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.charge(bytes)?;
        Ok(pairs)
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > LOG_MESSAGE_BYTES_MAX {
            let mut cut = LOG_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let actor = &*self.actor;
        match level {
            log::Level::Trace => tracing::trace!(target: "machine", actor, "{message}"),
            log::Level::Debug => tracing::debug!(target: "machine", actor, "{message}"),
            log::Level::Info => tracing::info!(target: "machine", actor, "{message}"),
            log::Level::Warn => tracing::warn!(target: "machine", actor, "{message}"),
            log::Level::Error => tracing::error!(target: "machine", actor, "{message}"),
        }
        Ok(())
    }
}
