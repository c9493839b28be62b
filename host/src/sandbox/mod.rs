//! The Wasm sandbox: loads machine components and runs their calls under
//! deterministic limits.
//! (Over 800 lines: loading, compiling and calling share one engine
//! configuration and its caches; the host side of the WIT world is
//! `host.rs`, the bindings `bindings.rs`, the tests `tests.rs`.)
//!
//! * Engine: component model, NaN canonicalisation, deterministic relaxed
//!   SIMD, no threads, fuel with pinned operator costs, an epoch watchdog and
//!   a pooling allocator with copy-on-write memory images.
//! * Loading ([`Sandbox::load`]): accepts a component or a core module that
//!   carries its WIT type section (componentized with `wit-component`), and
//!   refuses anything that imports outside `understudy:machine` by name.
//! * Calls ([`Sandbox::apply`], [`Sandbox::init`], [`Sandbox::query`]) run in a
//!   fresh instance each time, so no state survives in guest memory and the
//!   fuel a command uses depends only on the state and the command — the same
//!   on every replica. [`Sandbox::apply_warm`] runs a command on an instance
//!   kept from earlier calls ([`Warm`]); its caller decides which calls share
//!   one, and must decide it alike on every replica (the applier's runs).
//!   Writes collect in a [`view::WriteSet`] over a read view; the caller
//!   keeps or drops them.
//!
//! Deterministic failures (refusal, trap, fuel, memory limit) become an
//! [`Outcome`]; only host-side failures (watchdog, allocator exhausted) are a
//! [`SandboxError`], and those must never be committed as a result.

mod host;
pub use crate::kv as view;

use crate::types::{EntryContext, Index, Outcome, Term};
use serde_bytes::ByteBuf;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;
use view::{KvRead, WriteSet};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OperatorCost, PoolingAllocationConfig, Store, Trap,
    WasmFeatures,
};

/// The exact interfaces a machine may import.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "understudy:machine/types@0.1.0",
    "understudy:machine/kv@0.1.0",
    "understudy:machine/log@0.1.0",
];

mod bindings;

pub use bindings::MachinePre;

pub use crate::config::SandboxLimits;
pub use crate::kv::{ModuleHash, StateView};

/// Most stack a machine's call may use, in bytes.
pub const WASM_STACK_BYTES_MAX: usize = 1 << 20;

/// Instances (and memories) the sandbox's pool holds at once: two runs'
/// chains of `RUN_ACTORS_MAX` and the queries fit.
pub const POOL_COMPONENT_INSTANCES: u32 = 64;

/// Core instances (and tables) the pool holds at once.
pub const POOL_CORE_INSTANCES: u32 = 256;

/// Bytes of a pooled memory reset with memset (the rest is decommitted).
pub const MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Bytes of a pooled table reset with memset.
pub const TABLE_KEEP_RESIDENT_BYTES: usize = 1 << 16;

/// Why a module cannot be loaded as a machine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly binary.
    #[error("not a WebAssembly module or component (bad magic header)")]
    NotWasm,
    /// It imports something outside our world.
    #[error(
        "module imports `{name}`; machines may import only understudy:machine interfaces (kv, log, types), no WASI"
    )]
    ForbiddenImport {
        /// The offending import.
        name: String,
    },
    /// A core module without the WIT type information of our world.
    #[error("core module cannot be turned into a machine component: {0}")]
    NotAMachine(String),
    /// Invalid Wasm, or it does not export the machine world.
    #[error("module is not a valid machine: {0}")]
    Invalid(String),
    /// A part of the module is over a limit of [`crate::limits`]; the
    /// message names it.
    #[error("{0}")]
    OverLimit(String),
}

/// A host-side failure of a call; never committed as a result.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The wall-clock watchdog interrupted the call.
    #[error("call exceeded the {0} ms watchdog; not committing a result")]
    Watchdog(u64),
    /// The host could not instantiate (e.g. the instance pool is exhausted).
    #[error("cannot instantiate machine: {0}")]
    Instantiate(String),
}

/// A host-side failure, with the view handed back (it may carry writes
/// that the caller must not lose).
pub struct SandboxFailure<V> {
    /// What failed.
    pub error: SandboxError,
    /// The view that went in.
    pub view: V,
}

impl<V> std::fmt::Debug for SandboxFailure<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Result of one machine call.
pub struct Call<V> {
    /// The view, handed back.
    pub view: V,
    /// Deterministic outcome; writes are meaningful only if it is `Ok`.
    pub outcome: Outcome,
    /// The call's writes (empty unless the outcome is `Ok`).
    pub writes: WriteSet,
    /// Fuel the call consumed.
    pub fuel_used: u64,
}

/// A loaded machine: its hash and its pre-instantiated component (or the
/// native implementation registered for that hash).
#[derive(Clone)]
pub struct LoadedMachine {
    /// Hash of the component bytes.
    pub hash: ModuleHash,
    code: Code,
}

#[derive(Clone)]
enum Code {
    Wasm(MachinePre<host::HostState>),
    Native(Arc<dyn NativeMachine>),
}

/// A machine written in Rust and linked into the host, registered for the
/// hash of a component with the same behaviour. It runs with the same
/// write overlay, host budget and outcomes as Wasm code, but without the
/// sandbox; it exists as the reference point of the benchmarks (how much
/// does Wasm cost?) and must be exactly as deterministic as the component
/// it stands in for.
pub trait NativeMachine: Send + Sync + 'static {
    /// Apply a command.
    fn apply(
        &self,
        kv: &mut NativeKv<'_>,
        ctx: CallContext,
        command: &[u8],
    ) -> Result<Vec<u8>, (String, String)>;
    /// Answer a query.
    fn query(&self, kv: &mut NativeKv<'_>, request: &[u8]) -> Result<Vec<u8>, (String, String)>;
}

/// The key-value interface a [`NativeMachine`] gets: the same host
/// functions a component imports.
pub struct NativeKv<'a> {
    state: &'a mut host::HostState,
}

impl NativeKv<'_> {
    /// See `kv.get` in the WIT file.
    pub fn get(&mut self, key: &[u8]) -> wasmtime::Result<Option<Vec<u8>>> {
        bindings::understudy::machine::kv::Host::get(self.state, key.to_vec())
    }
    /// See `kv.put`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> wasmtime::Result<()> {
        bindings::understudy::machine::kv::Host::put(self.state, key.to_vec(), value.to_vec())
    }
    /// See `kv.delete`.
    pub fn delete(&mut self, key: &[u8]) -> wasmtime::Result<bool> {
        bindings::understudy::machine::kv::Host::delete(self.state, key.to_vec())
    }
}

/// The wasmtime engine plus the linker of our world. A clone shares the
/// engine, linker and natives (queries run on threads of their own with one).
#[derive(Clone)]
pub struct Sandbox {
    natives: std::collections::HashMap<ModuleHash, Arc<dyn NativeMachine>>,
    engine: Engine,
    linker: Arc<Linker<host::HostState>>,
    limits: SandboxLimits,
    compat_hash: [u8; 32],
    precompiled: Precompiled,
}

/// Artifacts a [`Compiler`] made off the applier thread, by module hash,
/// for [`Sandbox::precompile`] to take instead of compiling again. Holds
/// the newest [`Precompiled::KEPT`] (a deploy is compiled by every member
/// moments before its entry is applied), and the hash being compiled now:
/// the applier waits for that compile instead of doing it twice.
#[derive(Clone, Default)]
struct Precompiled(Arc<(std::sync::Mutex<Kept>, std::sync::Condvar)>);

#[derive(Default)]
struct Kept {
    artifacts: std::collections::VecDeque<Artifact>,
    compiling: Option<ModuleHash>,
}

/// A module hash and the artifact compiled from it.
type Artifact = (ModuleHash, Arc<Vec<u8>>);

impl Precompiled {
    const KEPT: usize = 4;

    /// How long the applier waits for a compile of the module it needs
    /// that a [`Compiler`] is running (then it compiles it itself).
    const WAIT_MS: u64 = 120_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, hash: ModuleHash) {
        self.lock().compiling = Some(hash);
    }

    /// The compile of `hash` ended, with its artifact if it succeeded.
    fn finish(&self, hash: ModuleHash, artifact: Option<Vec<u8>>) {
        let mut kept = self.lock();
        if let Some(artifact) = artifact {
            kept.artifacts.retain(|(h, _)| *h != hash);
            kept.artifacts.push_back((hash, Arc::new(artifact)));
            while kept.artifacts.len() > Self::KEPT {
                kept.artifacts.pop_front();
            }
        }
        if kept.compiling == Some(hash) {
            kept.compiling = None;
        }
        drop(kept);
        self.0.1.notify_all();
    }

    /// The artifact of `hash`, waiting (bounded) for a compile of it in
    /// progress.
    fn get(&self, hash: &ModuleHash) -> Option<Arc<Vec<u8>>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(Self::WAIT_MS);
        let mut kept = self.lock();
        loop {
            if let Some((_, a)) = kept.artifacts.iter().find(|(h, _)| h == hash) {
                return Some(a.clone());
            }
            let now = std::time::Instant::now();
            if kept.compiling != Some(*hash) || now >= deadline {
                return None;
            }
            kept = self
                .0
                .1
                .wait_timeout(kept, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Compiles modules on any thread with the sandbox's engine, for the node
/// to check a deploy before it proposes it; the artifact then waits for
/// the applier (see [`Sandbox::precompile`]).
#[derive(Clone)]
pub struct Compiler {
    engine: Engine,
    linker: Arc<Linker<host::HostState>>,
    precompiled: Precompiled,
}

impl Compiler {
    /// Normalize `wasm` ([`Sandbox::normalize`]), compile it and check that
    /// it is a machine of our world; the component bytes on success.
    pub fn compile(&self, wasm: &[u8]) -> Result<Vec<u8>, LoadError> {
        let component = Sandbox::normalize(wasm)?;
        let hash = Sandbox::hash(&component);
        self.precompiled.start(hash);
        let checked = self.check(&component);
        let artifact = checked.as_ref().ok().cloned();
        self.precompiled.finish(hash, artifact);
        checked.map(|_| component)
    }

    /// Compile `component` and check that it is a machine: its artifact.
    fn check(&self, component: &[u8]) -> Result<Vec<u8>, LoadError> {
        let artifact = self
            .engine
            .precompile_component(component)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // SAFETY: the artifact was made by this engine just now.
        let compiled = unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&compiled)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        MachinePre::new(pre).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        Ok(artifact)
    }
}

struct Blake3Hasher(blake3::Hasher);
impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only used to feed bytes")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

const EPOCH_TICK_MS: u64 = 10;

impl Sandbox {
    /// Build the engine. Starts the epoch ticker thread (it ends with the engine).
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            // Pin the per-operator fuel costs explicitly; the engine's
            // compatibility hash (recorded with the group) covers them too.
            .operator_cost(OperatorCost::new())
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .wasm_features(WasmFeatures::THREADS, false)
            .max_wasm_stack(WASM_STACK_BYTES_MAX)
            // Explicit bounds checks instead of guard pages: a fresh instance
            // per call then reuses its pool slot without an mprotect on every
            // instantiation and memory.grow (measured: 11 → 6 µs per apply).
            .signals_based_traps(false)
            .memory_guard_size(0)
            .memory_reservation(limits.memory_bytes_max as u64)
            .memory_init_cow(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(POOL_CORE_INSTANCES)
            .total_memories(POOL_COMPONENT_INSTANCES)
            .total_tables(POOL_CORE_INSTANCES)
            .max_memory_size(limits.memory_bytes_max)
            // Queries, deploys and each run's first command instantiate
            // afresh, so slot reuse is a hot path: reset small memories and
            // tables with memset instead of madvise, and batch the decommits
            // of the rest.
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES)
            .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
            .decommit_batch_size(32)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;
        let mut linker = Linker::<host::HostState>::new(&engine);
        bindings::Machine::add_to_linker::<host::HostState, HasSelf<host::HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("linking the machine world: {e}"))?;

        let mut h = Blake3Hasher(blake3::Hasher::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        h.0.update(b"understudy-sandbox-v1");
        let compat_hash = *h.0.finalize().as_bytes();

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("understudy-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                }
            })?;
        Ok(Sandbox {
            natives: Default::default(),
            engine,
            linker: Arc::new(linker),
            limits,
            compat_hash,
            precompiled: Precompiled::default(),
        })
    }

    /// A compiler sharing this sandbox's engine, whose artifacts
    /// [`Self::precompile`] takes.
    pub fn compiler(&self) -> Compiler {
        Compiler {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            precompiled: self.precompiled.clone(),
        }
    }

    /// Run `machine` instead of the component whose hash is `hash`.
    pub fn register_native(&mut self, hash: ModuleHash, machine: Arc<dyn NativeMachine>) {
        self.natives.insert(hash, machine);
    }

    /// The native machine registered for `hash`, loaded.
    pub fn native(&self, hash: &ModuleHash) -> Option<LoadedMachine> {
        self.natives.get(hash).map(|m| LoadedMachine {
            hash: *hash,
            code: Code::Native(m.clone()),
        })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Hash of the engine's code-generation settings (wasmtime version,
    /// fuel costs, features). Precompiled artifacts and a group's replicas
    /// must agree on it.
    pub fn compatibility_hash(&self) -> [u8; 32] {
        self.compat_hash
    }

    /// Check `wasm` and turn it into the component bytes we store and hash:
    /// a component is taken as is; a core module with our WIT type section
    /// is componentized. Import checks and the function size limit
    /// ([`crate::limits::FUNCTION_BODY_BYTES_MAX`]) happen here, before
    /// anything is compiled; the same verdict at the door and at apply.
    pub fn normalize(wasm: &[u8]) -> Result<Vec<u8>, LoadError> {
        if wasmparser::Parser::is_component(wasm) {
            check_component_imports(wasm)?;
            check_function_sizes(wasm)?;
            Ok(wasm.to_vec())
        } else if wasmparser::Parser::is_core_wasm(wasm) {
            check_core_imports(wasm)?;
            check_function_sizes(wasm)?;
            let component = wit_component::ComponentEncoder::default()
                .module(wasm)
                .and_then(|e| e.validate(true).encode())
                .map_err(|e| LoadError::NotAMachine(format!("{e:#}")))?;
            check_component_imports(&component)?;
            Ok(component)
        } else {
            Err(LoadError::NotWasm)
        }
    }

    /// Hash of normalized component bytes.
    pub fn hash(component: &[u8]) -> ModuleHash {
        *blake3::hash(component).as_bytes()
    }

    /// Compile normalized component bytes to a precompiled artifact (or
    /// take the one a [`Compiler`] made of them, waiting for it if it is
    /// compiling them now).
    pub fn precompile(&self, component: &[u8]) -> Result<Vec<u8>, LoadError> {
        if let Some(artifact) = self.precompiled.get(&Self::hash(component)) {
            tracing::debug!("a deployed module's artifact was compiled ahead of its apply");
            return Ok(artifact.as_ref().clone());
        }
        self.engine
            .precompile_component(component)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    /// Load a machine from normalized component bytes, or from a
    /// precompiled artifact that this node produced with [`Self::precompile`]
    /// under the same compatibility hash.
    ///
    /// # Safety
    /// `artifact`, when given, must come from this node's own storage:
    /// wasmtime trusts precompiled code.
    pub unsafe fn load(
        &self,
        component: &[u8],
        artifact: Option<&[u8]>,
    ) -> Result<LoadedMachine, LoadError> {
        let hash = Self::hash(component);
        let compiled = match artifact {
            // SAFETY: the caller guarantees the artifact is ours.
            Some(bytes) => unsafe { Component::deserialize(&self.engine, bytes) },
            None => Component::new(&self.engine, component),
        }
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&compiled)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = MachinePre::new(pre).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        Ok(LoadedMachine {
            hash,
            code: Code::Wasm(pre),
        })
    }

    fn store(
        &self,
        actor: &str,
        view: Box<dyn StateView>,
        writable: bool,
    ) -> Store<host::HostState> {
        let state = host::HostState::new(actor, view, writable, &self.limits);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(self.limits.fuel_per_call)
            .expect("fuel is enabled in the engine config");
        store.set_epoch_deadline(self.limits.watchdog_ms.div_ceil(EPOCH_TICK_MS).max(1));
        store.epoch_deadline_trap();
        store
    }

    fn finish<V: StateView>(
        &self,
        store: Store<host::HostState>,
        result: CallResult,
    ) -> Result<Call<V>, SandboxFailure<V>> {
        let fuel_used = self.limits.fuel_per_call - store.get_fuel().unwrap_or(0);
        let outcome = outcome_of(result, store.data());
        let state = store.into_data();
        conclude(outcome, state.view, state.writes, fuel_used)
    }

    /// Run `apply(ctx, command)` of `machine` for `actor` over `view`, on
    /// a fresh instance.
    pub fn apply<V: StateView>(
        &self,
        machine: &LoadedMachine,
        actor: &str,
        view: V,
        ctx: CallContext,
        command: &[u8],
    ) -> Result<Call<V>, SandboxFailure<V>> {
        match self.warm(machine, actor) {
            Ok(mut fresh) => self.apply_warm(&mut fresh, view, ctx, command),
            Err(error) => Err(SandboxFailure { error, view }),
        }
    }

    /// An instance of `machine` for `actor` to keep for several
    /// [`Self::apply_warm`] calls.
    pub fn warm(&self, machine: &LoadedMachine, actor: &str) -> Result<Warm, SandboxError> {
        let mut store = self.store(actor, Box::new(NoView), true);
        let instance = match &machine.code {
            Code::Native(m) => WarmCode::Native(m.clone()),
            Code::Wasm(pre) => match pre.instantiate(&mut store) {
                Ok(instance) => WarmCode::Wasm(instance),
                Err(e) => return Err(SandboxError::Instantiate(format!("{e:#}"))),
            },
        };
        Ok(Warm {
            store,
            code: instance,
            spent: false,
        })
    }

    /// Run `apply(ctx, command)` on a kept instance: like [`Self::apply`]
    /// (fresh fuel, host budget and write-set), except that the guest's
    /// memory is what the instance's earlier calls left. A call that does
    /// not end normally (any outcome but `Ok` or `Refused`, or a failure)
    /// spends the instance: [`Warm::spent`].
    pub fn apply_warm<V: StateView>(
        &self,
        warm: &mut Warm,
        view: V,
        ctx: CallContext,
        command: &[u8],
    ) -> Result<Call<V>, SandboxFailure<V>> {
        assert!(!warm.spent, "a spent instance is never called again");
        let store = &mut warm.store;
        store.data_mut().next_call(Box::new(view), &self.limits);
        store
            .set_fuel(self.limits.fuel_per_call)
            .expect("fuel is enabled in the engine config");
        store.set_epoch_deadline(self.limits.watchdog_ms.div_ceil(EPOCH_TICK_MS).max(1));
        let result = match &warm.code {
            WarmCode::Native(m) => native_result(m.apply(
                &mut NativeKv {
                    state: store.data_mut(),
                },
                ctx,
                command,
            )),
            WarmCode::Wasm(instance) => instance.call_apply(&mut *store, ctx.into(), command),
        };
        let fuel_used = self.limits.fuel_per_call - store.get_fuel().unwrap_or(0);
        warm.spent = result.is_err();
        let outcome = outcome_of(result, store.data());
        let state = store.data_mut();
        let writes = std::mem::take(&mut state.writes);
        let view = state.next_call(Box::new(NoView), &self.limits);
        conclude(outcome, view, writes, fuel_used)
    }

    /// Run `init(ctx)` of `machine` for `actor` over `view`.
    pub fn init<V: StateView>(
        &self,
        machine: &LoadedMachine,
        actor: &str,
        view: V,
        ctx: CallContext,
    ) -> Result<Call<V>, SandboxFailure<V>> {
        let mut store = self.store(actor, Box::new(view), true);
        let result = match &machine.code {
            Code::Native(_) => Ok(Ok(Vec::new())),
            Code::Wasm(pre) => match pre.instantiate(&mut store) {
                Ok(instance) => instance
                    .call_init(&mut store, ctx.into())
                    .map(|r| r.map(|()| Vec::new())),
                Err(e) => return Err(instantiate_error(e, store)),
            },
        };
        self.finish(store, result)
    }

    /// Run the read-only `query(request)` of `machine` for `actor` over `view`.
    pub fn query<V: StateView>(
        &self,
        machine: &LoadedMachine,
        actor: &str,
        view: V,
        request: &[u8],
    ) -> Result<Call<V>, SandboxFailure<V>> {
        let mut store = self.store(actor, Box::new(view), false);
        let result = match &machine.code {
            Code::Native(m) => native_result(m.query(
                &mut NativeKv {
                    state: store.data_mut(),
                },
                request,
            )),
            Code::Wasm(pre) => match pre.instantiate(&mut store) {
                Ok(instance) => instance.call_query(&mut store, request),
                Err(e) => return Err(instantiate_error(e, store)),
            },
        };
        self.finish(store, result)
    }
}

/// An instance kept across calls (see [`Sandbox::warm`]). Whoever keeps
/// one decides which calls share it, and must decide it the same way on
/// every replica: the guest's memory carries over, and with it anything a
/// guest remembers outside its kv state (allocator state, caches, which
/// also change the fuel a call burns).
pub struct Warm {
    store: Store<host::HostState>,
    code: WarmCode,
    spent: bool,
}

enum WarmCode {
    Wasm(bindings::Machine),
    Native(Arc<dyn NativeMachine>),
}

impl Warm {
    /// A call on it trapped, ran out of fuel or memory, or failed: it is
    /// not called again.
    pub fn spent(&self) -> bool {
        self.spent
    }
}

/// The view a kept instance holds between calls: empty.
struct NoView;

impl KvRead for NoView {
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn range(&self, _: &[u8], _: Option<&[u8]>, _: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        Vec::new()
    }
}

/// The entry facts a call sees (see `context` in the WIT file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallContext {
    /// Entry index.
    pub index: Index,
    /// Entry term.
    pub term: Term,
    /// Leader-chosen time and seed.
    pub entry: EntryContext,
}

impl From<CallContext> for bindings::understudy::machine::types::Context {
    fn from(c: CallContext) -> Self {
        bindings::understudy::machine::types::Context {
            index: c.index,
            term: c.term,
            timestamp_ms: c.entry.timestamp_ms,
            seed: c.entry.seed,
        }
    }
}

type CallResult =
    wasmtime::Result<Result<Vec<u8>, bindings::understudy::machine::types::MachineError>>;

fn native_result(r: Result<Vec<u8>, (String, String)>) -> CallResult {
    Ok(r.map_err(
        |(code, message)| bindings::understudy::machine::types::MachineError { code, message },
    ))
}

/// The outcome of a call that returned `result`, or a host failure.
fn outcome_of(result: CallResult, state: &host::HostState) -> Result<Outcome, SandboxError> {
    use crate::limits::RESPONSE_BYTES_MAX;
    // An answer travels in log entries (row kind), sessions and frames:
    // past the limit it is a deterministic trap, the same on every replica.
    let too_large = || Outcome::Trapped {
        trap: RESPONSE_TOO_LARGE.to_string(),
    };
    match result {
        Ok(Ok(bytes)) if bytes.len() > RESPONSE_BYTES_MAX => Ok(too_large()),
        Ok(Ok(bytes)) => Ok(Outcome::Ok(ByteBuf::from(bytes))),
        Ok(Err(e)) if e.code.len() + e.message.len() > RESPONSE_BYTES_MAX => Ok(too_large()),
        Ok(Err(e)) => Ok(Outcome::Refused {
            code: e.code,
            message: e.message,
        }),
        Err(err) => classify(&err, state),
    }
}

/// The trap kind of an answer over [`crate::limits::RESPONSE_BYTES_MAX`].
pub const RESPONSE_TOO_LARGE: &str = "response-too-large";

/// A finished call: the view handed back, and the writes only if `Ok`.
fn conclude<V: StateView>(
    outcome: Result<Outcome, SandboxError>,
    view: Box<dyn StateView>,
    writes: WriteSet,
    fuel_used: u64,
) -> Result<Call<V>, SandboxFailure<V>> {
    let view = take_view::<V>(view);
    let outcome = match outcome {
        Ok(o) => o,
        Err(error) => return Err(SandboxFailure { error, view }),
    };
    let writes = if outcome.is_ok() {
        writes
    } else {
        WriteSet::new()
    };
    Ok(Call {
        view,
        outcome,
        writes,
        fuel_used,
    })
}

fn take_view<V: StateView>(view: Box<dyn StateView>) -> V {
    *view
        .into_any()
        .downcast::<V>()
        .expect("the view type going in is the view type coming out")
}

/// Instantiation failed: the pool is exhausted or the host is out of
/// memory (a machine built by wit-bindgen has no start function that could
/// trap). Not a property of the command, so never committed.
fn instantiate_error<V: StateView>(
    e: wasmtime::Error,
    store: Store<host::HostState>,
) -> SandboxFailure<V> {
    SandboxFailure {
        error: SandboxError::Instantiate(format!("{e:#}")),
        view: take_view(store.into_data().view),
    }
}

/// Turn a failed call into a deterministic outcome, or a host-side error.
fn classify(err: &wasmtime::Error, state: &host::HostState) -> Result<Outcome, SandboxError> {
    if state.limiter.memory_limit_hit {
        return Ok(Outcome::MemoryLimit);
    }
    if let Some(trap) = err.downcast_ref::<host::HostTrap>() {
        return Ok(match trap {
            host::HostTrap::HostBudget => Outcome::OutOfFuel,
            other => Outcome::Trapped {
                trap: other.kind().to_string(),
            },
        });
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Ok(Outcome::OutOfFuel),
        Some(Trap::Interrupt) => Err(SandboxError::Watchdog(state.watchdog_ms)),
        Some(trap) => Ok(Outcome::Trapped {
            trap: format!("{trap:?}"),
        }),
        // Anything else (e.g. a canonical-ABI lift/lower failure on bad
        // guest data) is still a deterministic function of guest behaviour.
        None => Ok(Outcome::Trapped {
            trap: "invalid-guest-data".to_string(),
        }),
    }
}

fn import_allowed(name: &str) -> bool {
    ALLOWED_IMPORTS.contains(&name)
}

fn check_component_imports(wasm: &[u8]) -> Result<(), LoadError> {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| LoadError::Invalid(e.to_string()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| LoadError::Invalid(e.to_string()))?;
                    // Type imports (the world's `use types.{..}`) grant nothing.
                    let is_type = matches!(import.ty, wasmparser::ComponentTypeRef::Type(_));
                    if !is_type && !import_allowed(import.name.name) {
                        return Err(LoadError::ForbiddenImport {
                            name: import.name.name.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuse a module with a function body over
/// [`crate::limits::FUNCTION_BODY_BYTES_MAX`] (in any core module a
/// component nests): one such function can keep Cranelift busy for
/// minutes. A linear pass over the bytes; nothing is compiled.
fn check_function_sizes(wasm: &[u8]) -> Result<(), LoadError> {
    use wasmparser::{Parser, Payload};
    let limit = crate::limits::FUNCTION_BODY_BYTES_MAX;
    let mut function = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| LoadError::Invalid(e.to_string()))?;
        if let Payload::CodeSectionEntry(body) = payload {
            let range = body.range();
            let what = format!("function {function} of the module");
            crate::limits::check(
                &what,
                range.end - range.start,
                "FUNCTION_BODY_BYTES_MAX",
                limit,
            )
            .map_err(|e| LoadError::OverLimit(e.to_string()))?;
            function += 1;
        }
    }
    Ok(())
}

fn check_core_imports(wasm: &[u8]) -> Result<(), LoadError> {
    use wasmparser::{Parser, Payload};
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| LoadError::Invalid(e.to_string()))?;
        if let Payload::ImportSection(reader) = payload {
            for import in reader.into_imports() {
                let import = import.map_err(|e| LoadError::Invalid(e.to_string()))?;
                // wit-bindgen names imports after their interface; anything
                // else (wasi_snapshot_preview1, env, …) is outside our world.
                let module = import.module;
                let ours =
                    import_allowed(module) || module == "$root" || module.starts_with("[export]");
                if !ours {
                    return Err(LoadError::ForbiddenImport {
                        name: format!("{module}::{}", import.name),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
