//! Applies committed log entries to the machine state through the sandbox.
//!
//! [`Applier::execute`] runs committed entries: each against a read
//! snapshot plus the pending writes of every entry executed before it, and
//! its effects join the pending batch, which reads see at once.
//! [`Applier::checkpoint`] commits the pending batch — machine writes,
//! client sessions, new actors and modules, `applied_index` and the state
//! digest — in one LMDB write transaction, at a window end of
//! [`RUN_WINDOW`] only ([`Applier::apply`] is both). A crash before a
//! checkpoint re-executes those entries from the log to the same outcomes;
//! after it, none of them: never twice, never skipped.
//!
//! The digest chains, per entry, the index and the (prefixed) write-set the
//! entry produced, so two replicas — or a replay of the log — that agree on
//! the digest at an index agree on every write up to it.
//!
//! Commands share their actor's Wasm instance within a *run* (see
//! [`RUN_WINDOW`]): every replica runs the same entries in the same runs,
//! because runs are cut by the log alone, state becomes durable only at a
//! run's window end (so a restart, or a snapshot, resumes at a window start
//! with fresh instances), and the leader's ahead-of-commit execution keeps
//! runs of its own that start only where the log's runs start.

use crate::access::{self, AuthView};
use crate::auth::{Action, AuthState, Principal};
use crate::codec;
use crate::sandbox::view::{self, KvRead, WriteSet};
use crate::sandbox::{CallContext, LoadError, LoadedMachine, ModuleHash, Sandbox, SandboxError};
use crate::storage::{
    self, ActorRecord, AppliedState, StateBatch, StateSnapshot, StateStore, StorageError,
    actor_prefix, session_key,
};
use crate::types::{ClientTag, Effects, Entry, Index, Outcome, Payload, Term, validate_actor_name};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a batch could not be applied. None of these is a property of the
/// entries: the batch is not committed and can be retried.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A host-side sandbox failure (watchdog, instance pool).
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A committed entry the applier was asked to apply is not in the log.
    #[error("committed entry {0} is missing from the log")]
    Missing(Index),
    /// The batch does not continue the applied index.
    #[error("entries must continue the applied index {applied}, got {got}")]
    Gap {
        /// Applied index.
        applied: Index,
        /// First index offered.
        got: Index,
    },
    /// The leader's execution of an entry ahead of its commit and its
    /// execution on apply disagree: a determinism bug of the host or the
    /// machine. The writer may have been answered with the former.
    #[error(
        "entry {index} executed ahead of its commit gave another result than on apply \
         (a determinism bug); not applying"
    )]
    Diverged {
        /// The entry.
        index: Index,
    },
}

/// Commands share their actor's instance within a run: the entries of one
/// window of this many indexes (`k·W + 1 ..= (k+1)·W`) and of one term. A
/// deploy of the actor, or a call that does not end normally, ends its
/// instance sooner. Runs are cut by the log alone, so every replica runs
/// the same entries in the same runs; part of the log format (changing it
/// changes what machines compute). Reuse takes a call from ≈ 6 µs (a fresh
/// instance) to ≈ 1.2 µs.
pub const RUN_WINDOW: Index = 64;

/// Most instances one chain of runs keeps: a command for one more actor
/// first drops the one used longest ago (by log index, so every replica
/// drops the same). Two chains (applier and speculation) plus a query
/// stay well inside the sandbox's pool of 64 instances.
pub const RUN_ACTORS_MAX: usize = 16;

/// Whether `index` opens a window of [`RUN_WINDOW`] entries.
pub fn opens_window(index: Index) -> bool {
    index >= 1 && (index - 1).is_multiple_of(RUN_WINDOW)
}

/// One chain of runs: the instances its commands share, and where it is.
#[derive(Default)]
struct Run {
    /// The index this chain can run next (0: none; it can only start at a
    /// window start).
    next: Index,
    /// The term of the entry before `next`, if this chain ran it.
    term: Option<Term>,
    /// Kept instances by actor, with the index of their last call.
    warm: HashMap<String, (crate::sandbox::Warm, Index)>,
}

/// Which chain of runs executes an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    /// The applier's: committed entries, in log order.
    Applied,
    /// The leader's ahead-of-commit execution.
    Speculated,
}

impl Chain {
    /// This chain's runs, of the applier's two.
    fn of<'a>(self, applied: &'a mut Run, speculated: &'a mut Run) -> &'a mut Run {
        match self {
            Chain::Applied => applied,
            Chain::Speculated => speculated,
        }
    }
}

impl Run {
    /// A chain that continues after `index`, a window end (or 0).
    fn after(index: Index) -> Run {
        Run {
            next: index + 1,
            term: None,
            warm: HashMap::new(),
        }
    }

    /// Move to entry `e`, whose term started at `term_start` if known (the
    /// index of its leader's no-op: the core always starts a term so);
    /// false if this chain cannot run `e` the way every replica runs it (it
    /// did not run the commands of `e`'s run before `e`).
    fn enter(&mut self, e: &Entry, term_start: Option<Index>) -> bool {
        // The entry at `term_start` is the new leader's no-op: a run that
        // starts there has made no call before the entry after it.
        let starts = opens_window(e.index)
            || term_start.is_some_and(|t| e.index == t || e.index == t + 1)
            || (self.next == e.index && self.term.is_some_and(|t| t != e.term));
        if starts {
            self.warm.clear();
        } else if self.next != e.index {
            *self = Run::default();
            return false;
        }
        self.next = e.index + 1;
        self.term = Some(e.term);
        true
    }

    /// Start over at `e` with fresh instances, whatever came before (row
    /// log kind: only the leader runs commands, and logs what they did).
    fn restart(&mut self, e: &Entry) {
        self.warm.clear();
        self.next = e.index + 1;
        self.term = Some(e.term);
    }
}

/// Why a query failed before it reached a machine.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No such actor.
    #[error("no actor named {0:?}")]
    NoSuchActor(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Host-side sandbox failure.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The stored module no longer loads (engine changed).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The state was checkpointed between the query's preparation and its
    /// run: the pending writes it was handed no longer sit on the state it
    /// would read. Prepare it again.
    #[error("the state moved on since the query was prepared")]
    Stale,
}

/// A query taken at one applied index by [`Applier::prepare_query`],
/// runnable on any thread.
pub struct QueryJob {
    sandbox: Sandbox,
    machine: LoadedMachine,
    actor: String,
    state: StateStore,
    /// The durable applied index the pending writes sit on.
    base: Index,
    overlay: Arc<WriteSet>,
    applied_index: Index,
}

impl QueryJob {
    /// The actor queried.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Run the query: its outcome and the applied index it reflects. It
    /// takes its read snapshot now (so a job waiting for a thread holds no
    /// LMDB reader); if a checkpoint passed since it was prepared, it reads
    /// the newer durable state alone (`Stale` if the actor was deployed
    /// anew meanwhile). A value that fails its checksum voids the answer
    /// (`StorageError::StateCorrupt`).
    pub fn run(self, request: &[u8]) -> Result<(Outcome, Index), QueryError> {
        let QueryJob {
            sandbox,
            machine,
            actor,
            state,
            base,
            overlay,
            applied_index,
        } = self;
        let snap = state.snapshot()?;
        let durable = snap.applied_index()?;
        let (overlay, applied_index) = if durable == base {
            (overlay, applied_index)
        } else {
            // A checkpoint (or a snapshot's install) passed since: it made
            // every write this query was handed durable, and perhaps more
            // — the state as of `durable` is at least as new as the one it
            // was prepared for, and complete without the pending writes.
            // Unless the actor was deployed anew meanwhile (its machine
            // would be the old one): then it is prepared again.
            let same_module = snap
                .actor(&actor)?
                .is_some_and(|r| r.module.as_slice() == machine.hash.as_slice());
            if durable < applied_index || !same_module {
                return Err(QueryError::Stale);
            }
            (Arc::new(WriteSet::new()), durable)
        };
        let view = SharedView { snap, overlay };
        let call = sandbox.query(&machine, &actor, ActorView::new(&actor, view), request);
        let (result, view): (Result<Outcome, QueryError>, SharedView) = match call {
            Ok(call) => (Ok(call.outcome), call.view.batch),
            Err(f) => (Err(f.error.into()), f.view.batch),
        };
        if let Some(e) = view.snap.corruption() {
            return Err(e.into());
        }
        Ok((result?, applied_index))
    }
}

/// The snapshot plus the writes of the batch so far (full keys).
struct BatchView {
    snap: StateSnapshot,
    overlay: WriteSet,
}

impl KvRead for BatchView {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        view::layered_get(&self.overlay, &self.snap, key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        view::layered_range(&self.overlay, &self.snap, start, end, limit)
    }
}

/// The snapshot plus the pending writes as they were when a query was
/// taken, shared with the applier (which copies them again only after it
/// changed them): a query reads it on a thread of its own.
struct SharedView {
    snap: StateSnapshot,
    overlay: Arc<WriteSet>,
}

impl KvRead for SharedView {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        view::layered_get(&self.overlay, &self.snap, key)
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        view::layered_range(&self.overlay, &self.snap, start, end, limit)
    }
}

/// One actor's namespace of a [`BatchView`] (or a query's [`SharedView`]):
/// keys are prefixed going in and stripped coming out, so actors never see
/// each other's keys.
struct ActorView<B = BatchView> {
    prefix: Vec<u8>,
    batch: B,
}

impl<B> ActorView<B> {
    fn new(actor: &str, batch: B) -> Self {
        ActorView {
            prefix: actor_prefix(actor),
            batch,
        }
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }
}

impl<B: KvRead> KvRead for ActorView<B> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.batch.get(&self.full(key))
    }
    fn range(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let start = self.full(start);
        let end = match end {
            Some(e) => Some(self.full(e)),
            None => prefix_end(&self.prefix),
        };
        self.batch
            .range(&start, end.as_deref(), limit)
            .into_iter()
            .map(|(k, v)| (k[self.prefix.len()..].to_vec(), v))
            .collect()
    }
}

fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Chain `digest` over one entry's index and prefixed write-set.
pub fn chain_digest(digest: &[u8; 32], index: Index, writes: &WriteSet) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(digest);
    h.update(&index.to_be_bytes());
    for (k, v) in writes {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k);
        match v {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_be_bytes());
                h.update(v);
            }
            None => {
                h.update(&[0]);
            }
        }
    }
    *h.finalize().as_bytes()
}

/// Loaded machines by module hash, loaded on first use: a registered native
/// stand-in, else the precompiled artifact (compiled and cached on a miss).
#[derive(Default)]
struct MachineCache {
    loaded: HashMap<ModuleHash, LoadedMachine>,
}

impl MachineCache {
    fn load(
        &mut self,
        sandbox: &Sandbox,
        state: &StateStore,
        hash: &ModuleHash,
        component: impl FnOnce() -> Result<Option<Vec<u8>>, StorageError>,
    ) -> Result<LoadedMachine, QueryError> {
        if let Some(m) = self.loaded.get(hash) {
            return Ok(m.clone());
        }
        if let Some(m) = sandbox.native(hash) {
            self.loaded.insert(*hash, m.clone());
            return Ok(m);
        }
        let compat = sandbox.compatibility_hash();
        let bytes = component()?.ok_or_else(|| {
            StorageError::Invariant(format!("module {} missing from storage", hex(hash)))
        })?;
        let artifact = match state.artifact(hash, &compat)? {
            Some(a) => a,
            None => {
                let a = sandbox.precompile(&bytes)?;
                // Cache for the next start; losing it only costs a recompile.
                if let Err(e) = state.put_artifact(hash, &compat, &a) {
                    tracing::warn!(error = %e, "could not cache precompiled artifact");
                }
                a
            }
        };
        // SAFETY: the artifact was produced by this node's engine (same
        // compatibility hash in its key) and read from this node's storage.
        let m = unsafe { sandbox.load(&bytes, Some(&artifact)) }?;
        self.loaded.insert(*hash, m.clone());
        Ok(m)
    }

    /// The machine of `actor` as `batch` (pending deploys first) and the
    /// snapshot under `view` see it; `None` if there is no such actor.
    fn of_actor(
        &mut self,
        sandbox: &Sandbox,
        state: &StateStore,
        actor: &str,
        snap: &StateSnapshot,
        batch: &StateBatch,
    ) -> Result<Option<LoadedMachine>, QueryError> {
        let record = match batch.actors.get(actor) {
            Some(r) => r.clone(),
            None => match snap.actor(actor)? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let hash = <ModuleHash>::try_from(record.module.as_slice()).map_err(|_| {
            StorageError::Invariant(format!("actor {actor} has a malformed module hash"))
        })?;
        let pending = batch.modules.get(&hash).cloned();
        self.load(sandbox, state, &hash, || match pending {
            Some(b) => Ok(Some(b)),
            None => snap.module(&hash),
        })
        .map(Some)
    }
}

/// Applies entries and answers queries for one node.
pub struct Applier {
    sandbox: Sandbox,
    state: StateStore,
    machines: MachineCache,
    /// What the state store holds.
    durable: AppliedState,
    /// Executed entries' effects not yet checkpointed (`applied_index` 0:
    /// none). Reads go through it, so it is part of the visible state.
    pending: StateBatch,
    /// `pending.kv` as handed to queries, until it changes (see
    /// [`Applier::prepare_query`]).
    shared_overlay: Option<Arc<WriteSet>>,
    pending_entries: usize,
    /// Digests at sample indexes executed since the last
    /// [`Self::take_samples`].
    samples: Vec<(Index, [u8; 32])>,
    /// On the leader: entries executed before they commit.
    spec: Option<Speculation>,
    /// The applier's runs (committed entries).
    run: Run,
    /// The leader's runs (entries executed ahead of their commit).
    spec_run: Run,
    /// Commands run through their machine (not answered from a session or
    /// taken from a speculation), for tests.
    calls: u64,
    /// The auth state last decoded and the index of the auth change it
    /// is from (`None`: auth never configured). Entries check against the
    /// state their view holds; it rarely changes, so a command reads only
    /// the 8-byte version to know the cached state is the one.
    auth_cache: (Option<Index>, Arc<AuthState>),
    /// Where the auth state of the applied entries is published.
    auth_view: AuthView,
}

/// What applying one entry changes.
#[derive(Clone, Debug)]
struct Change {
    outcome: Outcome,
    /// Prefixed kv writes.
    writes: WriteSet,
    /// A new exactly-once record under this tag.
    session: Option<ClientTag>,
    /// A deployed actor: name, module hash, component bytes.
    deploy: Option<(String, ModuleHash, Vec<u8>)>,
}

impl Change {
    fn of_outcome(outcome: Outcome) -> Change {
        Change {
            outcome,
            writes: WriteSet::new(),
            session: None,
            deploy: None,
        }
    }

    /// Record everything but the kv writes (which go through the view).
    fn fold_into(&self, batch: &mut StateBatch, index: Index) {
        if let Some(tag) = self.session {
            batch.sessions.insert(
                session_key(tag.client_id, tag.seq),
                Some(codec::encode(&self.outcome)),
            );
            let below = batch.session_prunes.entry(tag.client_id).or_insert(0);
            *below = (*below).max(tag.acked_below.min(tag.seq));
        }
        if let Some((actor, hash, component)) = &self.deploy {
            batch.modules.insert(*hash, component.clone());
            batch.actors.insert(
                actor.clone(),
                ActorRecord {
                    module: hash.to_vec(),
                    deployed_at: index,
                },
            );
        }
    }

    fn to_effects(&self) -> Effects {
        Effects {
            outcome: self.outcome.clone(),
            writes: self
                .writes
                .iter()
                .map(|(k, v)| (ByteBuf::from(k.clone()), v.clone().map(ByteBuf::from)))
                .collect(),
            session: self.session,
            deploy: self
                .deploy
                .as_ref()
                .map(|(a, _, c)| (a.clone(), ByteBuf::from(c.clone()))),
        }
    }

    /// The change an Effects entry describes. Effects are made by a
    /// leader's sandbox, which keeps every limit; if an entry breaks one
    /// anyway (a host bug, a foreign leader), it is committed everywhere as
    /// the same refusal, never written into LMDB where it would halt the
    /// node (BRIEF invariant 9).
    fn from_effects(fx: &Effects) -> Change {
        if let Err(why) = check_effects(fx) {
            tracing::error!(reason = %why, "an effects entry breaks a limit; committed as refused");
            return Change {
                session: fx.session,
                ..Change::of_outcome(Outcome::Trapped {
                    trap: INVALID_EFFECTS.to_string(),
                })
            };
        }
        Change {
            outcome: fx.outcome.clone(),
            writes: fx
                .writes
                .iter()
                .map(|(k, v)| (k.to_vec(), v.as_ref().map(|v| v.to_vec())))
                .collect(),
            session: fx.session,
            deploy: fx
                .deploy
                .as_ref()
                .map(|(a, c)| (a.clone(), Sandbox::hash(c), c.to_vec())),
        }
    }
}

/// The trap kind of an Effects entry that breaks a limit.
pub const INVALID_EFFECTS: &str = "invalid-effects";

/// Whether an Effects entry keeps the limits its leader's sandbox keeps.
fn check_effects(fx: &Effects) -> Result<(), InvalidEffects> {
    use crate::limits::{LMDB_KEY_BYTES_MAX, MODULE_BYTES_MAX, VALUE_BYTES_MAX};
    for (k, v) in &fx.writes {
        // A prefixed key: length byte, a valid actor name, then the key.
        let name_len = *k.first().ok_or(InvalidEffects::EmptyKey)? as usize;
        let name = k
            .get(1..1 + name_len)
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or(InvalidEffects::NoActorPrefix)?;
        // The group's own records (auth, audit) are written by the
        // leader's host, never by a machine.
        if name != access::SYSTEM_NAMESPACE {
            validate_actor_name(name)?;
        }
        if k.len() > LMDB_KEY_BYTES_MAX {
            return Err(InvalidEffects::KeyTooLong(k.len()));
        }
        if v.as_ref().is_some_and(|v| v.len() > VALUE_BYTES_MAX) {
            return Err(InvalidEffects::ValueTooLarge);
        }
    }
    if let Some((actor, component)) = &fx.deploy {
        validate_actor_name(actor)?;
        if component.len() > MODULE_BYTES_MAX {
            return Err(InvalidEffects::ModuleTooLarge);
        }
    }
    Ok(())
}

/// Why an Effects entry breaks the limits its leader's sandbox keeps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum InvalidEffects {
    #[error("an empty key")]
    EmptyKey,
    #[error("a key without an actor prefix")]
    NoActorPrefix,
    #[error(transparent)]
    BadName(#[from] crate::types::BadActorName),
    #[error("a key of {0} bytes")]
    KeyTooLong(usize),
    #[error("a value over VALUE_BYTES_MAX")]
    ValueTooLarge,
    #[error("a module over MODULE_BYTES_MAX")]
    ModuleTooLarge,
}

/// Entries the leader executed ahead of their commit (row log kind): the
/// executed state plus their changes, and the changes in log order.
struct Speculation {
    batch: StateBatch,
    queue: std::collections::VecDeque<(Index, Term, Change)>,
}

/// Most bytes of entries one step of a replay reads from the log (at
/// least one entry).
const REPLAY_READ_BYTES_MAX: usize = 4 << 20;

/// The digest is sampled at every index that is a multiple of this, so
/// nodes can compare their state at the same point of the log.
pub const DIGEST_SAMPLE_EVERY: Index = 64;

impl Applier {
    /// An applier over `state`, resuming from its applied index.
    pub fn new(sandbox: Sandbox, state: StateStore) -> Result<Self, StorageError> {
        let durable = state.applied()?;
        Ok(Applier {
            sandbox,
            state,
            machines: MachineCache::default(),
            durable,
            pending: StateBatch::default(),
            shared_overlay: None,
            pending_entries: 0,
            samples: Vec::new(),
            spec: None,
            run: Run::after(durable.index),
            spec_run: Run::default(),
            calls: 0,
            auth_cache: (None, Arc::default()),
            auth_view: AuthView::default(),
        })
        .and_then(|mut a| {
            a.publish_auth()?;
            Ok(a)
        })
    }

    /// Where this applier publishes the auth state of what it applied.
    pub fn auth_view(&self) -> AuthView {
        self.auth_view.clone()
    }

    /// Publish the auth state the applied entries left (durable and
    /// pending).
    fn publish_auth(&mut self) -> Result<(), StorageError> {
        let snap = self.state.snapshot()?;
        let pending = std::mem::take(&mut self.pending.kv);
        let state = self.auth_from(|k| view::layered_get(&pending, &snap, k));
        self.pending.kv = pending;
        self.auth_view.set(state?);
        Ok(())
    }

    /// The auth state as `view` holds it (none stored: the default, auth
    /// off), decoded only when its version differs from the cached one.
    fn auth_at(&mut self, view: &BatchView) -> Result<Arc<AuthState>, StorageError> {
        self.auth_from(|k| view.get(k))
    }

    /// [`Self::auth_at`] over any way of reading a key.
    fn auth_from(
        &mut self,
        get: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Arc<AuthState>, StorageError> {
        let version = match get(access::auth_version_key()) {
            None => None,
            Some(b) => Some(u64::from_be_bytes(b.as_slice().try_into().map_err(
                |_| StorageError::Invariant("the auth version is not 8 bytes".into()),
            )?)),
        };
        if version == self.auth_cache.0 {
            return Ok(self.auth_cache.1.clone());
        }
        let state = match get(&access::auth_key()) {
            None => AuthState::default(),
            Some(raw) => {
                codec::decode("auth state", &raw).map_err(|source| StorageError::Corrupt {
                    path: "state".into(),
                    what: "the auth state".into(),
                    source,
                })?
            }
        };
        self.auth_cache = (version, Arc::new(state));
        Ok(self.auth_cache.1.clone())
    }

    /// Add an audit record of `action` by `by` at entry `ctx` to `writes`.
    fn audit(
        view: &BatchView,
        writes: &mut WriteSet,
        ctx: CallContext,
        by: &Option<Principal>,
        action: String,
    ) -> Result<(), ApplyError> {
        let seq = match view.get(&access::audit_seq_key()) {
            None => 0,
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                StorageError::Invariant("the audit sequence is not 8 bytes".into())
            })?),
        };
        let record = access::AuditRecord {
            index: ctx.index,
            timestamp_ms: ctx.entry.timestamp_ms,
            by: by.clone(),
            action,
        };
        writes.insert(
            access::audit_key(seq % access::AUDIT_RECORDS_MAX),
            Some(codec::encode(&record)),
        );
        writes.insert(
            access::audit_seq_key(),
            Some((seq + 1).to_be_bytes().to_vec()),
        );
        Ok(())
    }

    /// The audit trail as applied (durable and pending), newest first, at
    /// most `limit` records.
    pub fn audit_trail(&self, limit: usize) -> Result<Vec<access::AuditRecord>, StorageError> {
        let snap = self.state.snapshot()?;
        let (start, end) = access::audit_range();
        let pairs = view::layered_range(
            &self.pending.kv,
            &snap,
            &start,
            Some(&end),
            access::AUDIT_RECORDS_MAX as usize,
        );
        if let Some(e) = snap.corruption() {
            return Err(e);
        }
        let mut records = pairs
            .iter()
            .map(|(_, v)| {
                codec::decode::<access::AuditRecord>("audit record", v).map_err(|source| {
                    StorageError::Corrupt {
                        path: "state".into(),
                        what: "an audit record".into(),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| std::cmp::Reverse(r.index));
        records.truncate(limit);
        Ok(records)
    }

    /// Last executed index and the digest after it (what reads see).
    pub fn applied(&self) -> AppliedState {
        if self.pending.applied_index == 0 {
            self.durable
        } else {
            AppliedState {
                index: self.pending.applied_index,
                digest: self.pending.digest,
            }
        }
    }

    /// Last index whose effects are durable in the state store.
    pub fn durable(&self) -> AppliedState {
        self.durable
    }

    /// The state store.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Apply `entries` (which must continue the applied index) and make
    /// them durable at once: [`Self::execute`] then [`Self::checkpoint`].
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(Index, Outcome)>, ApplyError> {
        let outcomes = self.execute(entries)?;
        self.checkpoint()?;
        Ok(outcomes)
    }

    /// Run `entries` (which must continue the applied index) through their
    /// machines and return their outcomes. The effects join the pending
    /// batch: later entries and queries see them, and [`Self::checkpoint`]
    /// makes them durable together with the applied index. The outcomes are
    /// final already: they are a deterministic function of the durable log,
    /// and a crash before the checkpoint re-executes the same entries.
    pub fn execute(&mut self, entries: &[Entry]) -> Result<Vec<(Index, Outcome)>, ApplyError> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        let executed = self.applied();
        if first.index != executed.index + 1 {
            return Err(ApplyError::Gap {
                applied: executed.index,
                got: first.index,
            });
        }
        let mut batch = std::mem::take(&mut self.pending);
        self.shared_overlay = None;
        let mut view = BatchView {
            snap: self.state.snapshot()?,
            overlay: std::mem::take(&mut batch.kv),
        };
        let mut digest = executed.digest;
        let mut auth_changed = false;
        let mut outcomes = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                first.index + i as u64,
                "batch entries are contiguous"
            );
            let ctx = CallContext {
                index: e.index,
                term: e.term,
                entry: e.context,
            };
            let executed = if self.run.enter(e, None) {
                self.apply_one(e, ctx, view, &batch, Chain::Applied)
                    .and_then(|(change, v)| {
                        self.check_speculated(e, &change)?;
                        Ok((change, v))
                    })
            } else {
                Err(ApplyError::Storage(StorageError::Invariant(format!(
                    "entry {} is inside a run of commands this node did not run \
                     (state at index {}, not at a window end of {RUN_WINDOW})",
                    e.index, executed.index
                ))))
            };
            let (change, v) = match executed {
                Ok(x) => x,
                Err(err) => {
                    // A host-side failure (storage, watchdog): drop every
                    // executed-but-not-durable effect; the durable state plus
                    // the log is still whole, and a restart re-executes.
                    self.pending_entries = 0;
                    self.spec = None;
                    self.spec_run = Run::default();
                    self.run = Run::default();
                    return Err(err);
                }
            };
            view = v;
            auth_changed |= change.writes.contains_key(access::auth_version_key());
            digest = chain_digest(&digest, e.index, &change.writes);
            if e.index.is_multiple_of(DIGEST_SAMPLE_EVERY) {
                self.samples.push((e.index, digest));
            }
            change.fold_into(&mut batch, e.index);
            self.committed_speculation(e);
            view.overlay.extend(change.writes);
            batch.applied_index = e.index;
            batch.digest = digest;
            outcomes.push((e.index, change.outcome));
        }
        batch.kv = view.overlay;
        self.pending_entries += outcomes.len();
        self.pending = batch;
        if auth_changed {
            self.publish_auth()?;
        }
        Ok(outcomes)
    }

    /// Digests at the sample indexes executed since the last call.
    pub fn take_samples(&mut self) -> Vec<(Index, [u8; 32])> {
        std::mem::take(&mut self.samples)
    }

    /// Entries executed but not yet made durable by [`Self::checkpoint`].
    pub fn pending_entries(&self) -> usize {
        self.pending_entries
    }

    /// Make every executed entry durable in one transaction: their state,
    /// sessions, actors and modules together with the applied index — if
    /// the last one ends a window of [`RUN_WINDOW`]; otherwise nothing
    /// happens (returns false) until one does: a restart from the middle of
    /// a run could not run its commands the way the other replicas do.
    pub fn checkpoint(&mut self) -> Result<bool, ApplyError> {
        let index = self.pending.applied_index;
        if index == 0 || !index.is_multiple_of(RUN_WINDOW) {
            return Ok(false);
        }
        self.state.commit(&self.pending)?;
        self.durable = AppliedState {
            index: self.pending.applied_index,
            digest: self.pending.digest,
        };
        self.pending = StateBatch::default();
        self.shared_overlay = None;
        self.pending_entries = 0;
        // The speculative state held a copy of what was pending: rebuild it
        // from the outstanding speculated changes alone.
        if let Some(spec) = self.spec.as_mut() {
            let mut batch = StateBatch::default();
            for (i, _, c) in &spec.queue {
                c.fold_into(&mut batch, *i);
                batch
                    .kv
                    .extend(c.writes.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            spec.batch = batch;
        }
        Ok(true)
    }

    /// The kv state reads see (durable plus pending), all of it.
    pub fn kv_pairs(&self) -> Result<view::Pairs, StorageError> {
        let mut all: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
            self.state.dump_kv()?.into_iter().collect();
        for (k, v) in &self.pending.kv {
            match v {
                Some(v) => all.insert(k.clone(), v.clone()),
                None => all.remove(k),
            };
        }
        Ok(all.into_iter().collect())
    }

    /// Replace the whole state by the snapshot in `dir` (chunks checked
    /// against `meta`'s checksums), unless this applier has already
    /// executed `meta.index` (then nothing changes; returns false).
    pub fn install_snapshot(
        &mut self,
        dir: &std::path::Path,
        meta: &crate::storage::SnapshotMeta,
    ) -> Result<bool, ApplyError> {
        if meta.index <= self.applied().index {
            return Ok(false);
        }
        if !meta.index.is_multiple_of(RUN_WINDOW) {
            return Err(StorageError::Invariant(format!(
                "snapshot at index {} is not at a window end of {RUN_WINDOW}: \
                 commands after it could not run the way the other replicas run them",
                meta.index
            ))
            .into());
        }
        let chunks = (0..meta.chunks).map(|seq| {
            let path = dir.join(crate::storage::chunk_name(seq));
            let bytes = std::fs::read(&path).map_err(|source| StorageError::Io {
                path: path.clone(),
                source,
            })?;
            if *blake3::hash(&bytes).as_bytes() != meta.checksums[seq as usize] {
                return Err(StorageError::Invariant(format!(
                    "snapshot chunk {seq} does not match its checksum"
                )));
            }
            crate::codec::decode("snapshot chunk", &bytes).map_err(|source| StorageError::Corrupt {
                path: path.clone(),
                what: format!("snapshot chunk {seq}"),
                source,
            })
        });
        self.state.install_snapshot(meta, chunks)?;
        self.pending = StateBatch::default();
        self.shared_overlay = None;
        self.pending_entries = 0;
        self.samples.clear();
        self.spec = None;
        self.spec_run = Run::default();
        self.run = Run::after(meta.index);
        self.machines = MachineCache::default();
        self.durable = AppliedState {
            index: meta.index,
            digest: meta.digest,
        };
        self.publish_auth()?;
        Ok(true)
    }

    /// Apply one entry over `view` and `batch` (read only); returns what
    /// it changes (writes empty unless Ok) and the view. A stored value the
    /// call read that fails its checksum voids the call: an error, never a
    /// result computed from damaged state.
    fn apply_one(
        &mut self,
        e: &Entry,
        ctx: CallContext,
        view: BatchView,
        batch: &StateBatch,
        chain: Chain,
    ) -> Result<(Change, BatchView), ApplyError> {
        let (change, view) = self.apply_one_unchecked(e, ctx, view, batch, chain)?;
        match view.snap.corruption() {
            Some(e) => Err(e.into()),
            None => Ok((change, view)),
        }
    }

    fn apply_one_unchecked(
        &mut self,
        e: &Entry,
        ctx: CallContext,
        view: BatchView,
        batch: &StateBatch,
        chain: Chain,
    ) -> Result<(Change, BatchView), ApplyError> {
        let now_ms = ctx.entry.timestamp_ms;
        let denied = |d: crate::auth::Denied| {
            Change::of_outcome(Outcome::Denied {
                reason: d.to_string(),
            })
        };
        match &e.payload {
            Payload::Noop => Ok((Change::of_outcome(Outcome::Ok(ByteBuf::new())), view)),
            Payload::Effects(fx) => Ok((Change::from_effects(fx), view)),
            Payload::Deploy { actor, wasm, by } => {
                let auth = self.auth_at(&view)?;
                if let Err(d) = auth.check(by.as_ref(), Action::Admin, now_ms) {
                    return Ok((denied(d), view));
                }
                // A new machine for the actor: its instance ends here.
                chain
                    .of(&mut self.run, &mut self.spec_run)
                    .warm
                    .remove(actor.as_str());
                let (mut change, view) = self.deploy(actor, wasm, ctx, view, batch, &auth)?;
                if let Some((_, hash, _)) = &change.deploy {
                    let action = format!("deploy {actor} (module {})", crate::auth::hex(hash));
                    Self::audit(&view, &mut change.writes, ctx, by, action)?;
                }
                Ok((change, view))
            }
            Payload::Auth { change, by } => {
                let auth = self.auth_at(&view)?;
                if let Err(d) = auth.check(by.as_ref(), Action::Admin, now_ms) {
                    return Ok((denied(d), view));
                }
                match auth.apply(change, now_ms) {
                    Err(message) => Ok((
                        Change::of_outcome(Outcome::Refused {
                            code: "bad-request".into(),
                            message,
                        }),
                        view,
                    )),
                    Ok(next) => {
                        let encoded = codec::encode(&next);
                        let limit = crate::limits::VALUE_BYTES_MAX;
                        if encoded.len() > limit {
                            let message = format!(
                                "the auth state would take {} bytes, over VALUE_BYTES_MAX = \
                                 {limit}: remove users, roles or tokens first",
                                encoded.len()
                            );
                            let refused = Outcome::Refused {
                                code: "too-large".into(),
                                message,
                            };
                            return Ok((Change::of_outcome(refused), view));
                        }
                        let mut done = Change::of_outcome(Outcome::Ok(ByteBuf::new()));
                        done.writes.insert(access::auth_key(), Some(encoded));
                        done.writes.insert(
                            access::auth_version_key().to_vec(),
                            Some(ctx.index.to_be_bytes().to_vec()),
                        );
                        Self::audit(&view, &mut done.writes, ctx, by, change.to_string())?;
                        Ok((done, view))
                    }
                }
            }
            Payload::Audit { action, by } => {
                let auth = self.auth_at(&view)?;
                if let Err(d) = auth.check(by.as_ref(), Action::Admin, now_ms) {
                    return Ok((denied(d), view));
                }
                let mut done = Change::of_outcome(Outcome::Ok(ByteBuf::new()));
                Self::audit(&view, &mut done.writes, ctx, by, action.clone())?;
                Ok((done, view))
            }
            Payload::Command {
                actor,
                client,
                command,
                by,
            } => {
                let auth = self.auth_at(&view)?;
                if let Err(d) = auth.check(by.as_ref(), Action::Write(actor), now_ms) {
                    // Remembered like any outcome: a retry of the same tag
                    // gets the same answer.
                    let mut change = denied(d);
                    change.session = *client;
                    return Ok((change, view));
                }
                if let Some(tag) = client {
                    let key = session_key(tag.client_id, tag.seq);
                    let remembered = match batch.sessions.get(&key) {
                        Some(v) => v.clone(),
                        None => view.snap.session(&key)?,
                    };
                    if let Some(bytes) = remembered {
                        // Exactly-once client writes: a retry gets the first result.
                        let outcome: Outcome =
                            codec::decode("session", &bytes).map_err(|source| {
                                StorageError::Corrupt {
                                    path: "sessions".into(),
                                    what: format!("session {}/{}", tag.client_id, tag.seq),
                                    source,
                                }
                            })?;
                        return Ok((Change::of_outcome(outcome), view));
                    }
                }
                self.calls += 1;
                let (outcome, writes, view) =
                    self.command(actor, command, ctx, view, batch, chain)?;
                let change = Change {
                    outcome,
                    writes,
                    session: *client,
                    deploy: None,
                };
                Ok((change, view))
            }
        }
    }

    fn command(
        &mut self,
        actor: &str,
        command: &[u8],
        ctx: CallContext,
        view: BatchView,
        batch: &StateBatch,
        chain: Chain,
    ) -> Result<(Outcome, WriteSet, BatchView), ApplyError> {
        // No actor has an invalid name (deploys refuse them), and looking
        // one up could fail in LMDB (an empty or over-long key): answered
        // as what it is, deterministically.
        if validate_actor_name(actor).is_err() {
            return Ok((Outcome::NoSuchActor, WriteSet::new(), view));
        }
        let run = chain.of(&mut self.run, &mut self.spec_run);
        // An instance of this run is of the actor's machine: only a deploy
        // changes that, and it ends the actor's instance in every chain.
        if !run.warm.contains_key(actor) {
            let loaded =
                self.machines
                    .of_actor(&self.sandbox, &self.state, actor, &view.snap, batch);
            let machine = match loaded {
                Ok(Some(m)) => m,
                Ok(None) => return Ok((Outcome::NoSuchActor, WriteSet::new(), view)),
                Err(QueryError::Storage(e)) => return Err(e.into()),
                Err(QueryError::Sandbox(e)) => return Err(e.into()),
                // The module was validated when deployed; if it no longer
                // loads, the engine changed under a running group. Fail loudly.
                Err(e) => {
                    let why = format!("machine of actor {actor} no longer loads: {e}");
                    return Err(StorageError::Invariant(why).into());
                }
            };
            if run.warm.len() >= RUN_ACTORS_MAX {
                let oldest = run
                    .warm
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(a, _)| a.clone())
                    .expect("full");
                run.warm.remove(&oldest);
            }
            let warm = self.sandbox.warm(&machine, actor)?;
            run.warm.insert(actor.to_string(), (warm, 0));
        }
        let (warm, used) = run.warm.get_mut(actor).expect("kept above");
        *used = ctx.index;
        let result = self
            .sandbox
            .apply_warm(warm, ActorView::new(actor, view), ctx, command);
        if warm.spent() {
            run.warm.remove(actor);
        }
        let call = result.map_err(|f| ApplyError::Sandbox(f.error))?;
        let prefix = &call.view.prefix;
        let writes = prefixed(prefix, call.writes);
        Ok((call.outcome, writes, call.view.batch))
    }

    fn deploy(
        &mut self,
        actor: &str,
        wasm: &[u8],
        ctx: CallContext,
        view: BatchView,
        _batch: &StateBatch,
        auth: &AuthState,
    ) -> Result<(Change, BatchView), ApplyError> {
        let refused = |reason: String| Change::of_outcome(Outcome::DeployRefused { reason });
        if let Err(reason) = validate_actor_name(actor) {
            return Ok((refused(reason.to_string()), view));
        }
        let limit = crate::limits::MODULE_BYTES_MAX;
        if let Err(reason) =
            crate::limits::check("the module", wasm.len(), "MODULE_BYTES_MAX", limit)
        {
            return Ok((refused(reason.to_string()), view));
        }
        let component = match Sandbox::normalize(wasm) {
            Ok(c) => c,
            Err(e) => return Ok((refused(e.to_string()), view)),
        };
        let what = "the module as a component";
        if let Err(reason) = crate::limits::check(what, component.len(), "MODULE_BYTES_MAX", limit)
        {
            return Ok((refused(reason.to_string()), view));
        }
        let hash = Sandbox::hash(&component);
        if !auth.module_allowed(&hash) {
            return Ok((
                refused(format!(
                    "module {} is not on this group's allow-list (`understudy auth module allow`)",
                    crate::auth::hex(&hash)
                )),
                view,
            ));
        }
        let bytes = component.clone();
        let loaded = self
            .machines
            .load(&self.sandbox, &self.state, &hash, || Ok(Some(bytes)));
        let machine = match loaded {
            Ok(m) => m,
            Err(QueryError::Load(e)) => return Ok((refused(e.to_string()), view)),
            Err(QueryError::Storage(e)) => return Err(e.into()),
            Err(QueryError::Sandbox(e)) => return Err(e.into()),
            Err(QueryError::NoSuchActor(_) | QueryError::Stale) => {
                unreachable!("loading never looks up actors nor runs a query")
            }
        };
        let call = self
            .sandbox
            .init(&machine, actor, ActorView::new(actor, view), ctx)
            .map_err(|f| ApplyError::Sandbox(f.error))?;
        let writes = prefixed(&call.view.prefix, call.writes);
        let view = call.view.batch;
        let change = match call.outcome {
            Outcome::Ok(_) => Change {
                outcome: Outcome::Ok(ByteBuf::from(hash.to_vec())),
                writes,
                session: None,
                deploy: Some((actor.to_string(), hash, component)),
            },
            // A failed init's writes were dropped by the sandbox.
            other => Change {
                writes,
                ..refused(format!("init failed: {other:?}"))
            },
        };
        Ok((change, view))
    }

    /// On the leader: execute `entries` (commands and deploys with their
    /// index, term and context fixed, continuing the log after everything
    /// executed or speculated so far) against the executed state plus
    /// earlier speculated entries, and return their outcomes with them —
    /// as `Effects` entries to log (row log kind, `as_effects`), or as
    /// they are (statement log kind: they are in the log already, and
    /// [`Self::execute`] runs them again on apply, checking that it gets
    /// the same). Nothing becomes visible to reads or durable until the
    /// entries commit and are applied; if the leader loses its term,
    /// [`Self::discard_speculation`] forgets them. `term_start` is the
    /// index of the leader's term's first entry.
    ///
    /// Statements are executed only as every replica will execute them: in
    /// the same runs. Where the leader's chain of runs cannot (it missed
    /// the start of a run), this stops early and returns the entries before;
    /// the rest are executed on apply only.
    pub fn speculate(
        &mut self,
        entries: &[Entry],
        as_effects: bool,
        term_start: Index,
    ) -> Result<Vec<(Entry, Outcome)>, ApplyError> {
        let applied = self.applied().index;
        let spec = self.spec.get_or_insert_with(|| Speculation {
            batch: self.pending.clone(),
            queue: Default::default(),
        });
        let first = spec.queue.back().map_or(applied, |(i, _, _)| *i) + 1;
        let mut batch = std::mem::take(&mut spec.batch);
        let mut queue = std::mem::take(&mut spec.queue);
        let mut view = BatchView {
            snap: self.state.snapshot()?,
            overlay: std::mem::take(&mut batch.kv),
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut failed = None;
        for (expected, e) in (first..).zip(entries) {
            if e.index != expected {
                failed = Some(ApplyError::Gap {
                    applied: expected - 1,
                    got: e.index,
                });
                break;
            }
            if !self.spec_run.enter(e, Some(term_start)) {
                if as_effects {
                    self.spec_run.restart(e);
                } else {
                    break;
                }
            }
            let ctx = CallContext {
                index: e.index,
                term: e.term,
                entry: e.context,
            };
            let (change, v) = match self.apply_one(e, ctx, view, &batch, Chain::Speculated) {
                Ok(x) => x,
                Err(err) => {
                    failed = Some(err);
                    // The view went with the failed call; nothing of this
                    // speculation is kept.
                    self.spec = None;
                    self.spec_run = Run::default();
                    return Err(failed.expect("set"));
                }
            };
            view = v;
            change.fold_into(&mut batch, e.index);
            view.overlay
                .extend(change.writes.iter().map(|(k, v)| (k.clone(), v.clone())));
            let logged = if as_effects {
                Entry {
                    payload: Payload::Effects(Box::new(change.to_effects())),
                    ..e.clone()
                }
            } else {
                e.clone()
            };
            out.push((logged, change.outcome.clone()));
            queue.push_back((e.index, e.term, change));
        }
        batch.kv = view.overlay;
        if let Some(err) = failed {
            self.spec = None;
            return Err(err);
        }
        // Nothing outstanding (statements stopped at once): no speculation,
        // so the next applied entry is not taken for a divergence.
        self.spec = (!queue.is_empty()).then_some(Speculation { batch, queue });
        Ok(out)
    }

    /// Statement log kind, on the leader: if `e` was executed ahead of its
    /// commit (the oldest speculated entry, of the same index and term: the
    /// same entry), that execution must have done what applying it did.
    fn check_speculated(&self, e: &Entry, applied: &Change) -> Result<(), ApplyError> {
        if matches!(e.payload, Payload::Effects(_)) {
            return Ok(());
        }
        let Some((i, t, ahead)) = self.spec.as_ref().and_then(|s| s.queue.front()) else {
            return Ok(());
        };
        if *i == e.index
            && *t == e.term
            && (ahead.outcome != applied.outcome || ahead.writes != applied.writes)
        {
            tracing::error!(
                index = e.index,
                ahead = ?ahead.outcome,
                applied = ?applied.outcome,
                "an entry executed ahead of its commit did something else on apply"
            );
            return Err(ApplyError::Diverged { index: e.index });
        }
        Ok(())
    }

    /// Forget every speculated entry (the leader lost its term).
    pub fn discard_speculation(&mut self) {
        // Its runs ran entries that may never commit.
        self.spec_run = Run::default();
        if let Some(spec) = self.spec.take()
            && !spec.queue.is_empty()
        {
            tracing::info!(entries = spec.queue.len(), "speculative state discarded");
        }
    }

    /// Entries speculated and not yet applied.
    pub fn speculated(&self) -> usize {
        self.spec.as_ref().map_or(0, |s| s.queue.len())
    }

    /// Entry `e` was applied: if it is the oldest speculated one, its
    /// change is already in the speculative state; anything else means the
    /// speculation no longer describes the log, and it is dropped.
    fn committed_speculation(&mut self, e: &Entry) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        match spec.queue.front() {
            Some(&(i, t, _)) if i == e.index && t == e.term => {
                spec.queue.pop_front();
                if spec.queue.is_empty() {
                    self.spec = None;
                }
            }
            Some(&(i, _, _)) if i > e.index => {} // an earlier entry
            _ => {
                tracing::warn!(
                    index = e.index,
                    "log diverged from the speculation; discarding it"
                );
                self.spec = None;
                self.spec_run = Run::default();
            }
        }
    }

    /// Run a read-only query against the applied state, here. Returns the
    /// outcome and the applied index it reflects.
    pub fn query(&mut self, actor: &str, request: &[u8]) -> Result<(Outcome, Index), QueryError> {
        self.prepare_query(actor)?.run(request)
    }

    /// Take what a query of `actor` needs — the pending writes (shared,
    /// copied only when they changed since the last query) and the durable
    /// index they sit on, the loaded machine and the applied index — so
    /// that it runs on another thread ([`QueryJob::run`]) while this one
    /// applies. Cheap once the actor's module is loaded.
    pub fn prepare_query(&mut self, actor: &str) -> Result<QueryJob, QueryError> {
        if validate_actor_name(actor).is_err() {
            return Err(QueryError::NoSuchActor(actor.to_string()));
        }
        let snap = self.state.snapshot()?;
        let loaded =
            self.machines
                .of_actor(&self.sandbox, &self.state, actor, &snap, &self.pending);
        let corrupt = snap.corruption();
        if let Some(e) = corrupt {
            return Err(e.into());
        }
        let Some(machine) = loaded? else {
            return Err(QueryError::NoSuchActor(actor.to_string()));
        };
        let pending = &self.pending.kv;
        let overlay = self
            .shared_overlay
            .get_or_insert_with(|| Arc::new(pending.clone()))
            .clone();
        Ok(QueryJob {
            sandbox: self.sandbox.clone(),
            machine,
            actor: actor.to_string(),
            state: self.state.clone(),
            base: self.durable.index,
            overlay,
            applied_index: self.applied().index,
        })
    }

    /// Names of deployed actors, including those deployed by entries not
    /// yet checkpointed.
    pub fn actors(&self) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = self.state.actors()?.into_iter().map(|(n, _)| n).collect();
        names.extend(self.pending.actors.keys().cloned());
        names.sort();
        names.dedup();
        Ok(names)
    }
}

fn prefixed(prefix: &[u8], writes: WriteSet) -> WriteSet {
    writes
        .into_iter()
        .map(|(k, v)| {
            let mut full = prefix.to_vec();
            full.extend_from_slice(&k);
            (full, v)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replay `log` entries `1..=up_to` into a fresh state in `scratch` and
/// return the digest and the full kv contents: what the state must equal.
pub fn replay(
    log: &storage::LogStore,
    up_to: Index,
    scratch: &std::path::Path,
    identity: &storage::Identity,
    limits: crate::sandbox::SandboxLimits,
) -> anyhow::Result<(AppliedState, view::Pairs)> {
    let state = StateStore::open(scratch, identity, &storage::StorageOptions::default())?;
    let mut applier = Applier::new(Sandbox::new(limits)?, state)?;
    let mut next = 1;
    while next <= up_to {
        let entries = log.read(next, up_to, REPLAY_READ_BYTES_MAX)?;
        anyhow::ensure!(
            !entries.is_empty(),
            "log ends at {} before {up_to}",
            next - 1
        );
        next = entries.last().map(|e| e.index + 1).unwrap_or(next);
        applier.apply(&entries)?;
    }
    Ok((applier.applied(), applier.kv_pairs()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxLimits;
    use crate::storage::{FORMAT_VERSION, Identity, StorageOptions};
    use crate::types::{ClientTag, EntryContext};

    fn identity() -> Identity {
        Identity {
            format_version: FORMAT_VERSION,
            cluster_id: "t".into(),
            node_id: 1,
        }
    }

    fn applier(dir: &std::path::Path) -> Applier {
        let state = StateStore::open(dir, &identity(), &StorageOptions::default()).unwrap();
        Applier::new(Sandbox::new(SandboxLimits::default()).unwrap(), state).unwrap()
    }

    fn entry(index: Index, payload: Payload) -> Entry {
        Entry {
            index,
            term: 1,
            context: EntryContext {
                timestamp_ms: index,
                seed: index,
            },
            payload,
        }
    }

    fn add(index: Index, seq: u64) -> Entry {
        entry(
            index,
            Payload::Command {
                actor: "c".into(),
                client: Some(ClientTag {
                    client_id: 9,
                    seq,
                    acked_below: seq,
                }),
                command: codec::to_cbor(&serde_json::json!({"add": {"name": "n", "by": 1}})).into(),
                by: None,
            },
        )
    }

    fn counter(a: &mut Applier) -> Outcome {
        a.query("c", &codec::to_cbor(&serde_json::json!({"name": "n"})))
            .unwrap()
            .0
    }

    fn log() -> Vec<Entry> {
        let mut entries = vec![entry(
            1,
            Payload::Deploy {
                actor: "c".into(),
                wasm: understudy_examples::COUNTER.to_vec().into(),
                by: None,
            },
        )];
        entries.extend((2..=6).map(|i| add(i, i)));
        // A retry of seq 4 with a new index: answered from the session.
        entries.push(add(7, 4));
        entries
    }

    /// Commands after `log()` up to `to`.
    fn adds(from: Index, to: Index) -> Vec<Entry> {
        (from..=to).map(|i| add(i, i)).collect()
    }

    #[test]
    fn pending_effects_are_visible_before_the_checkpoint_and_durable_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path());
        let outcomes = a.execute(&log()).unwrap();
        assert_eq!(
            outcomes[6].1, outcomes[3].1,
            "a retried write returns its first result"
        );
        assert_eq!(a.applied().index, 7);
        assert_eq!(
            a.durable().index,
            0,
            "nothing durable before the checkpoint"
        );
        assert_eq!(
            counter(&mut a),
            Outcome::Ok(codec::to_cbor(&5i64).into()),
            "reads see pending writes"
        );
        assert!(!a.checkpoint().unwrap(), "not at a window end: nothing yet");
        assert_eq!(a.durable().index, 0);
        a.execute(&adds(8, RUN_WINDOW + 3)).unwrap();
        assert!(!a.checkpoint().unwrap(), "past the window end: not yet");
        a.execute(&adds(RUN_WINDOW + 4, 2 * RUN_WINDOW)).unwrap();
        assert!(a.checkpoint().unwrap());
        assert_eq!(a.durable(), a.applied());
        assert_eq!(a.state().applied().unwrap(), a.applied());
    }

    /// A query prepared before a checkpoint and run after it reads the
    /// newer durable state alone (never its old pending writes over the
    /// new state), reporting that state's index; one whose actor was
    /// deployed anew meanwhile is `Stale` (prepared again by the node).
    #[test]
    fn a_query_prepared_before_a_checkpoint_reads_the_newer_state_or_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path());
        a.execute(&log()).unwrap();
        let get = codec::to_cbor(&serde_json::json!({"name": "n"}));
        let before = a.prepare_query("c").unwrap();
        let same = a.prepare_query("c").unwrap();
        assert_eq!(
            same.run(&get).unwrap(),
            (Outcome::Ok(codec::to_cbor(&5i64).into()), 7),
            "no checkpoint between: the pending writes"
        );
        a.execute(&adds(8, RUN_WINDOW)).unwrap();
        assert!(a.checkpoint().unwrap());
        let n = 5 + (RUN_WINDOW - 7) as i64;
        assert_eq!(
            before.run(&get).unwrap(),
            (Outcome::Ok(codec::to_cbor(&n).into()), RUN_WINDOW),
            "after the checkpoint: the durable state at its index"
        );
        // The actor deployed anew (another module) and checkpointed.
        let stale = a.prepare_query("c").unwrap();
        let redeploy = entry(
            RUN_WINDOW + 1,
            Payload::Deploy {
                actor: "c".into(),
                wasm: understudy_examples::KV.to_vec().into(),
                by: None,
            },
        );
        a.execute(&[redeploy]).unwrap();
        a.execute(&adds(RUN_WINDOW + 2, 2 * RUN_WINDOW)).unwrap();
        assert!(a.checkpoint().unwrap());
        assert!(matches!(stale.run(&get), Err(QueryError::Stale)));
    }

    #[test]
    fn a_crash_before_the_checkpoint_re_executes_to_the_same_outcomes_and_digest() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut log = log();
        log.extend(adds(8, RUN_WINDOW + 10));
        let mut whole = applier(d1.path());
        let expected = whole.apply(&log).unwrap();

        let w = RUN_WINDOW as usize;
        let mut crashed = applier(d2.path());
        crashed.apply(&log[..w]).unwrap();
        crashed.execute(&log[w..]).unwrap();
        drop(crashed); // the pending batch dies with the process
        let mut restarted = applier(d2.path());
        assert_eq!(restarted.applied().index, RUN_WINDOW);
        let again = restarted.apply(&log[w..]).unwrap();
        assert_eq!(again[..], expected[w..]);
        assert_eq!(restarted.applied(), whole.applied());
        assert_eq!(restarted.kv_pairs().unwrap(), whole.kv_pairs().unwrap());
    }

    #[test]
    fn a_watchdog_interrupt_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path(), &identity(), &StorageOptions::default()).unwrap();
        let limits = SandboxLimits {
            fuel_per_call: u64::MAX / 4,
            watchdog_ms: 50,
            ..SandboxLimits::default()
        };
        let mut a = Applier::new(Sandbox::new(limits).unwrap(), state).unwrap();
        let deploy = entry(
            1,
            Payload::Deploy {
                actor: "m".into(),
                wasm: understudy_examples::MISBEHAVE.to_vec().into(),
                by: None,
            },
        );
        a.apply(&[deploy]).unwrap();
        let spin = entry(
            2,
            Payload::Command {
                actor: "m".into(),
                client: None,
                command: codec::to_cbor(&serde_json::json!({"loop": {"key": "x"}})).into(),
                by: None,
            },
        );
        let err = a.apply(&[spin]).unwrap_err();
        assert!(
            matches!(err, ApplyError::Sandbox(SandboxError::Watchdog(_))),
            "{err}"
        );
        assert_eq!(
            a.state().applied().unwrap().index,
            0,
            "no result was committed"
        );
        assert_eq!(a.applied().index, 0, "nor kept in memory");
    }

    #[test]
    fn precompiled_artifact_is_cached_and_keyed_by_engine() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path());
        a.apply(&log()[..2]).unwrap();
        let hash = Sandbox::hash(&Sandbox::normalize(understudy_examples::COUNTER).unwrap());
        let compat = a.sandbox().compatibility_hash();
        let artifact = a.state().artifact(&hash, &compat).unwrap();
        assert!(artifact.is_some(), "the first load caches the artifact");
        drop(a);
        // A different engine configuration has a different key: no stale
        // artifact can be picked up by it.
        let other = Sandbox::new(SandboxLimits {
            memory_bytes_max: 32 << 20,
            ..SandboxLimits::default()
        })
        .unwrap();
        assert_ne!(other.compatibility_hash(), compat);
        let mut restarted = applier(dir.path());
        restarted.apply(&log()[..3]).unwrap();
        assert_eq!(
            counter(&mut restarted),
            Outcome::Ok(codec::to_cbor(&2i64).into())
        );
    }

    /// The row log kind: what the leader speculates, committed and applied
    /// on the leader and on a follower (which runs no guest code), ends in
    /// the state a statement log of the same commands gives — even with a
    /// checkpoint and new speculation while earlier entries are in flight.
    #[test]
    fn speculated_effects_reach_the_same_state_as_statements() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut statement = applier(dirs[0].path());
        let mut leader = applier(dirs[1].path());
        let mut follower = applier(dirs[2].path());
        let entries = log();
        statement.apply(&entries).unwrap();
        // Deploy and two commands speculated; the deploy commits first.
        let effects_of = |out: Vec<(Entry, Outcome)>| -> Vec<Entry> {
            out.into_iter().map(|(e, _)| e).collect()
        };
        let first = effects_of(leader.speculate(&entries[..3], true, 1).unwrap());
        assert!(
            first
                .iter()
                .all(|e| matches!(e.payload, Payload::Effects(_)))
        );
        leader.execute(&first[..1]).unwrap();
        leader.checkpoint().unwrap();
        // More speculation on top of what is still in flight (2 and 3).
        let rest = effects_of(leader.speculate(&entries[3..], true, 1).unwrap());
        assert_eq!(leader.speculated(), entries.len() - 1);
        let effects: Vec<Entry> = first.into_iter().chain(rest).collect();
        // Reads see only what committed.
        assert_eq!(leader.applied().index, 1);
        let outcomes = leader.execute(&effects[1..]).unwrap();
        assert_eq!(leader.speculated(), 0);
        leader.checkpoint().unwrap();
        let on_follower = follower.apply(&effects).unwrap();
        assert_eq!(leader.applied(), statement.applied(), "same digest");
        assert_eq!(follower.applied(), statement.applied(), "same digest");
        assert_eq!(leader.kv_pairs().unwrap(), statement.kv_pairs().unwrap());
        assert_eq!(follower.kv_pairs().unwrap(), statement.kv_pairs().unwrap());
        // The retry (entry 7) was answered from the session, as in statements.
        assert_eq!(outcomes.last(), on_follower.last());
        assert_eq!(counter(&mut follower), counter(&mut statement));
    }

    /// Auth changes through the log: a command is checked against the
    /// auth state at its own index, so a revocation takes effect at one
    /// index on every replica, in both log kinds; admin actions leave
    /// audit records; the published auth state follows the applied one.
    #[test]
    fn auth_is_checked_at_each_entrys_index_in_both_log_kinds() {
        use crate::auth::{AuthChange, Permission, Principal, Token};
        let admin = Principal {
            user: "root".into(),
            token: None,
            cert: Some(vec![1; 32]),
        };
        let w = Principal {
            user: "w".into(),
            token: Some("t1".into()),
            cert: None,
        };
        let auth = |i, change| {
            entry(
                i,
                Payload::Auth {
                    change,
                    by: Some(admin.clone()),
                },
            )
        };
        let command = |i, by: Option<Principal>| {
            entry(
                i,
                Payload::Command {
                    actor: "c".into(),
                    client: None,
                    command: codec::to_cbor(&serde_json::json!({"add": {"name": "n", "by": 1}}))
                        .into(),
                    by,
                },
            )
        };
        let entries = vec![
            entry(
                1,
                Payload::Deploy {
                    actor: "c".into(),
                    wasm: understudy_examples::COUNTER.to_vec().into(),
                    by: Some(admin.clone()),
                },
            ),
            auth(
                2,
                AuthChange::RoleGrant {
                    role: "writer".into(),
                    permission: Permission::Write("c".into()),
                },
            ),
            auth(
                3,
                AuthChange::UserAdd {
                    name: "root".into(),
                    roles: ["admin".to_string()].into(),
                },
            ),
            auth(
                4,
                AuthChange::UserAdd {
                    name: "w".into(),
                    roles: ["writer".to_string()].into(),
                },
            ),
            auth(
                5,
                AuthChange::TokenCreate {
                    id: "t1".into(),
                    token: Token {
                        user: "w".into(),
                        hash: vec![0; 32],
                        expires_ms: 0,
                    },
                },
            ),
            auth(6, AuthChange::Enable),
            command(7, Some(w.clone())),
            auth(8, AuthChange::TokenRevoke { id: "t1".into() }),
            command(9, Some(w.clone())),
            command(10, None),
            entry(
                11,
                Payload::Deploy {
                    actor: "d".into(),
                    wasm: understudy_examples::KV.to_vec().into(),
                    by: Some(Principal {
                        token: None,
                        ..w.clone()
                    }),
                },
            ),
            // Auth on, so an enable with nobody named is denied too.
            entry(
                12,
                Payload::Auth {
                    change: AuthChange::Disable,
                    by: None,
                },
            ),
            // With an allow-list, a module off it is refused at apply.
            auth(13, AuthChange::ModuleAllow { hash: vec![9; 32] }),
            entry(
                14,
                Payload::Deploy {
                    actor: "e".into(),
                    wasm: understudy_examples::KV.to_vec().into(),
                    by: Some(admin.clone()),
                },
            ),
        ];
        let check = |outcomes: &[(Index, Outcome)]| {
            let at = |i: Index| &outcomes[i as usize - 1].1;
            assert!(at(7).is_ok(), "{:?}", at(7));
            for i in [9, 10, 11, 12] {
                assert!(matches!(at(i), Outcome::Denied { .. }), "{i}: {:?}", at(i));
            }
            assert!(
                matches!(at(14), Outcome::DeployRefused { reason } if reason.contains("allow-list")),
                "{:?}",
                at(14)
            );
        };
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut statement = applier(dirs[0].path());
        let view = statement.auth_view();
        assert!(!view.get().enabled);
        let outcomes = statement.apply(&entries).unwrap();
        check(&outcomes);
        assert!(view.get().enabled && !view.get().tokens.contains_key("t1"));
        // Row kind: the leader executes ahead of commit, followers apply
        // its effects.
        let mut leader = applier(dirs[1].path());
        let effects: Vec<Entry> = leader
            .speculate(&entries, true, 1)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        check(&leader.execute(&effects).unwrap());
        let mut follower = applier(dirs[2].path());
        check(&follower.apply(&effects).unwrap());
        assert_eq!(leader.applied(), statement.applied(), "same digest");
        assert_eq!(follower.applied(), statement.applied(), "same digest");
        assert!(follower.auth_view().get().enabled);
        // The audit trail: the deploy and the seven auth changes, newest
        // first (refusals and denials leave none).
        let trail = statement.audit_trail(100).unwrap();
        let actions: Vec<&str> = trail.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(trail.len(), 8, "{actions:?}");
        assert_eq!(trail[0].index, 13);
        assert_eq!(trail[1].index, 8);
        assert!(actions[1].starts_with("token revoke t1"), "{actions:?}");
        assert!(actions[7].starts_with("deploy c"), "{actions:?}");
        assert_eq!(trail[7].by.as_ref(), Some(&admin));
        assert_eq!(follower.audit_trail(100).unwrap(), trail);
        // It survives a restart (durable with the state, at a window end).
        let noops: Vec<Entry> = (15..=RUN_WINDOW).map(|i| entry(i, Payload::Noop)).collect();
        statement.apply(&noops).unwrap();
        assert_eq!(statement.durable().index, RUN_WINDOW);
        drop(statement);
        let again = applier(dirs[0].path());
        assert!(again.auth_view().get().enabled);
    }

    /// The auth state is one value: a change that would make it larger
    /// than `VALUE_BYTES_MAX` is committed as a refusal (a change that
    /// keeps it at the limit or under goes through).
    #[test]
    fn an_auth_change_past_value_bytes_max_is_refused_and_one_within_is_not() {
        use crate::auth::{AuthChange, AuthState};
        let limit = crate::limits::VALUE_BYTES_MAX;
        let mut state = AuthState::default();
        let mut i = 0u64;
        // Roles of long permissions fill it fast (within ROLES_MAX and
        // PERMISSIONS_PER_ROLE_MAX); short users fill the rest.
        while codec::encode(&state).len() < limit - 10_000 {
            let perms = (0..crate::auth::PERMISSIONS_PER_ROLE_MAX)
                .map(|p| crate::auth::Permission::Read(format!("{p:03}{}", "x".repeat(60))))
                .collect();
            state.roles.insert(format!("role-{i}"), perms);
            i += 1;
        }
        while codec::encode(&state).len() < limit - 40 {
            state.users.insert(format!("s{i}"), Default::default());
            i += 1;
        }
        let add = |name: String| AuthChange::UserAdd {
            name,
            roles: Default::default(),
        };
        let small = add("a".into());
        let large = add("b".repeat(crate::auth::NAME_BYTES_MAX));
        let within = state.apply(&small, 0).unwrap();
        assert!(codec::encode(&within).len() <= limit);
        let past = within.apply(&large, 0).unwrap();
        assert!(
            codec::encode(&past).len() > limit,
            "the test's second change must pass the limit"
        );
        // Stored as the applier keeps it, at a window end.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), &identity(), &StorageOptions::default()).unwrap();
        let mut batch = StateBatch::default();
        batch
            .kv
            .insert(access::auth_key(), Some(codec::encode(&state)));
        batch.kv.insert(
            access::auth_version_key().to_vec(),
            Some(1u64.to_be_bytes().to_vec()),
        );
        batch.applied_index = RUN_WINDOW;
        store.commit(&batch).unwrap();
        drop(store);
        let mut a = applier(dir.path());
        let entries = [small, large]
            .into_iter()
            .enumerate()
            .map(|(k, change)| {
                entry(
                    RUN_WINDOW + 1 + k as u64,
                    Payload::Auth { change, by: None },
                )
            })
            .collect::<Vec<_>>();
        let outcomes = a.apply(&entries).unwrap();
        assert!(outcomes[0].1.is_ok(), "{:?}", outcomes[0].1);
        assert!(
            matches!(&outcomes[1].1, Outcome::Refused { code, message } if code == "too-large" && message.contains("VALUE_BYTES_MAX")),
            "{:?}",
            outcomes[1].1
        );
        assert_eq!(a.auth_view().get().users.len(), state.users.len() + 1);
    }

    #[test]
    fn discarded_speculation_leaves_no_trace() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut a = applier(dirs[0].path());
        let mut b = applier(dirs[1].path());
        let entries = log();
        a.apply(&entries[..1]).unwrap();
        b.apply(&entries[..1]).unwrap();
        a.speculate(&entries[1..4], true, 1).unwrap();
        // The term is lost: another leader's entries commit at 2..
        a.discard_speculation();
        let others: Vec<Entry> = (2..=3).map(|i| add(i, 100 + i)).collect();
        a.apply(&others).unwrap();
        b.apply(&others).unwrap();
        assert_eq!(a.applied(), b.applied());
        assert_eq!(a.kv_pairs().unwrap(), b.kv_pairs().unwrap());
        // Without the discard, an applied entry that is not the speculated
        // one drops the speculation by itself.
        a.speculate(&[add(4, 50)], true, 1).unwrap();
        let other = add(4, 51);
        a.apply(std::slice::from_ref(&other)).unwrap();
        b.apply(&[other]).unwrap();
        assert_eq!(a.speculated(), 0);
        assert_eq!(a.applied(), b.applied());
    }

    /// The statement log kind on the leader: a command executed ahead of
    /// its commit is executed again on apply, in the applier's own runs,
    /// with the same outcome; the state, digest and outcomes equal a plain
    /// apply's. A speculation that no longer matches the log is dropped.
    #[test]
    fn a_speculated_statement_gets_the_outcome_it_gets_on_apply() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut plain = applier(dirs[0].path());
        let mut leader = applier(dirs[1].path());
        let entries = log();
        let expected = plain.apply(&entries).unwrap();
        leader.apply(&entries[..1]).unwrap();
        let calls = leader.calls;
        let speculated = leader.speculate(&entries[1..4], false, 1).unwrap();
        assert_eq!(leader.calls, calls + 3, "executed ahead of commit");
        assert!(
            speculated
                .iter()
                .zip(&entries[1..4])
                .all(|((logged, _), e)| logged == e),
            "statements are logged as they are"
        );
        let outcomes = leader.execute(&entries[1..]).unwrap();
        assert_eq!(
            leader.calls,
            calls + 3 + 5,
            "all run again on apply but the retry, answered from its session"
        );
        assert_eq!(outcomes, expected[1..].to_vec());
        assert_eq!(
            speculated
                .iter()
                .map(|(_, o)| o.clone())
                .collect::<Vec<_>>(),
            expected[1..4]
                .iter()
                .map(|(_, o)| o.clone())
                .collect::<Vec<_>>(),
            "the speculated outcomes are the committed ones"
        );
        assert_eq!(leader.applied(), plain.applied(), "same digest");
        assert_eq!(leader.kv_pairs().unwrap(), plain.kv_pairs().unwrap());

        // Speculated at term 1, but the log holds another entry of term 2
        // at that index: the speculation is dropped.
        leader.speculate(&[add(8, 8)], false, 1).unwrap();
        let mut other = add(8, 80);
        other.term = 2;
        leader.execute(&[other]).unwrap();
        assert_eq!(leader.speculated(), 0);
    }

    fn misbehave(index: Index, term: Term, json: &str) -> Entry {
        Entry {
            term,
            ..entry(
                index,
                Payload::Command {
                    actor: "m".into(),
                    client: None,
                    command: codec::to_cbor(
                        &serde_json::from_str::<serde_json::Value>(json).unwrap(),
                    )
                    .into(),
                    by: None,
                },
            )
        }
    }

    /// A log of `remember` commands (the machine answers how many commands
    /// its instance has run) over three windows, with a new term starting
    /// at 150 (with its leader's no-op, as always) and a trap at 100.
    fn remember_log() -> Vec<Entry> {
        let mut log = vec![entry(
            1,
            Payload::Deploy {
                actor: "m".into(),
                wasm: understudy_examples::MISBEHAVE.to_vec().into(),
                by: None,
            },
        )];
        for i in 2..=200 {
            if i == 150 {
                log.push(Entry {
                    term: 2,
                    ..entry(i, Payload::Noop)
                });
                continue;
            }
            let term = if i < 150 { 1 } else { 2 };
            let json = if i == 100 {
                r#"{"panic":{"key":"x"}}"#
            } else {
                r#"{"remember":null}"#
            };
            log.push(misbehave(i, term, json));
        }
        log
    }

    fn remembered(o: &Outcome) -> Option<u64> {
        match o {
            Outcome::Ok(b) => serde_cbor::from_slice::<(u64, u64)>(b).ok().map(|r| r.0),
            _ => None,
        }
    }

    /// Commands share an instance within a run — a window of RUN_WINDOW
    /// entries and one term, cut early by a trap — and every way of
    /// applying the log (any batching, checkpoints, crashes and restarts)
    /// runs the same runs: same outcomes, same digest.
    #[test]
    fn commands_share_an_instance_within_a_run_however_the_log_is_applied() {
        let log = remember_log();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut whole = applier(dirs[0].path());
        let expected = whole.apply(&log).unwrap();
        let run_start = |i: Index| -> Index {
            let window = (i - 1) / RUN_WINDOW * RUN_WINDOW + 1;
            let after_trap = if (101..=128).contains(&i) { 101 } else { 0 };
            let term = if i >= 150 { 151 } else { 0 };
            window.max(after_trap).max(term).max(2)
        };
        for (i, o) in &expected[1..] {
            if *i == 100 {
                assert!(matches!(o, Outcome::Trapped { .. }), "{o:?}");
                continue;
            }
            if *i == 150 {
                continue; // the no-op
            }
            assert_eq!(remembered(o), Some(i - run_start(*i) + 1), "entry {i}");
        }

        // In odd batches, with a checkpoint attempt after each.
        let mut batched = applier(dirs[1].path());
        let mut outcomes = Vec::new();
        for chunk in log.chunks(37) {
            outcomes.extend(batched.execute(chunk).unwrap());
            batched.checkpoint().unwrap();
        }
        assert_eq!(outcomes, expected);
        assert_eq!(batched.applied(), whole.applied());

        // Crashing (dropping what is not durable) after every 45 entries,
        // then restarting from what is.
        let mut outcomes = std::collections::BTreeMap::new();
        let mut next = 1usize;
        while next <= log.len() {
            let mut a = applier(dirs[2].path());
            let from = a.applied().index as usize + 1;
            assert!(opens_window(from as Index), "restarts at a window start");
            let to = (next + 44).min(log.len());
            for (i, o) in a.execute(&log[from - 1..to]).unwrap() {
                outcomes.insert(i, o);
            }
            a.checkpoint().unwrap();
            if to == log.len() {
                assert_eq!(a.applied(), whole.applied());
                assert_eq!(a.kv_pairs().unwrap(), whole.kv_pairs().unwrap());
            }
            next = to + 1;
        }
        assert_eq!(outcomes.into_iter().collect::<Vec<_>>(), expected);
    }

    /// The leader's ahead-of-commit execution runs only where its runs
    /// match the log's: from a new term's start, or after missing entries,
    /// from the next window; whatever it returns equals the apply's outcome.
    #[test]
    fn speculation_runs_the_runs_every_replica_runs() {
        let log = remember_log();
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut plain = applier(dirs[0].path());
        let expected = plain.apply(&log).unwrap();
        let mut leader = applier(dirs[1].path());
        leader.apply(&log[..149]).unwrap();
        // Term 2 starts at 150: speculation starts a run there.
        let ahead = leader.speculate(&log[149..160], false, 150).unwrap();
        assert_eq!(ahead.len(), 11);
        for ((e, o), (i, x)) in ahead.iter().zip(&expected[149..160]) {
            assert_eq!((e.index, o), (*i, x));
        }
        leader.execute(&log[149..160]).unwrap();
        // A lost speculation (say, a failed append) leaves its chain
        // behind the log: nothing runs ahead until the next window.
        leader.discard_speculation();
        leader.execute(&log[160..165]).unwrap();
        assert!(
            leader
                .speculate(&log[165..170], false, 150)
                .unwrap()
                .is_empty()
        );
        assert!(leader.spec.is_none(), "nothing outstanding");
        leader.execute(&log[165..192]).unwrap();
        let ahead = leader.speculate(&log[192..], false, 150).unwrap();
        assert_eq!(ahead.len(), log.len() - 192, "from the window at 193");
        for ((e, o), (i, x)) in ahead.iter().zip(&expected[192..]) {
            assert_eq!((e.index, o), (*i, x));
        }
        leader.execute(&log[192..]).unwrap();
        assert_eq!(leader.applied(), plain.applied());
    }

    /// A deploy ends its actor's instance within a run: the next command
    /// runs the new machine, in a fresh instance.
    #[test]
    fn a_deploy_ends_its_actors_instance() {
        let deploy = |index, wasm: &[u8]| {
            entry(
                index,
                Payload::Deploy {
                    actor: "m".into(),
                    wasm: wasm.to_vec().into(),
                    by: None,
                },
            )
        };
        let remember = |index| misbehave(index, 1, r#"{"remember":null}"#);
        let log = vec![
            deploy(1, understudy_examples::MISBEHAVE),
            remember(2),
            remember(3),
            deploy(4, understudy_examples::MISBEHAVE),
            remember(5),
            deploy(6, understudy_examples::COUNTER),
            misbehave(7, 1, r#"{"add":{"name":"n","by":3}}"#),
        ];
        let dir = tempfile::tempdir().unwrap();
        let out = applier(dir.path()).apply(&log).unwrap();
        let counts: Vec<Option<u64>> = out[1..5].iter().map(|(_, o)| remembered(o)).collect();
        assert_eq!(counts, vec![Some(1), Some(2), None, Some(1)]);
        assert_eq!(out[6].1, Outcome::Ok(codec::to_cbor(&3i64).into()));
    }

    /// A run over more actors than [`RUN_ACTORS_MAX`], on both chains at
    /// once: instances are dropped oldest first, the same way on both (no
    /// divergence), and the sandbox's pool is never exhausted.
    #[test]
    fn a_run_over_many_actors_keeps_a_bounded_number_of_instances() {
        let actors = 40;
        let mut log: Vec<Entry> = (1..=actors)
            .map(|i| {
                entry(
                    i,
                    Payload::Deploy {
                        actor: format!("m{i}"),
                        wasm: understudy_examples::MISBEHAVE.to_vec().into(),
                        by: None,
                    },
                )
            })
            .collect();
        log.extend((actors + 1..=RUN_WINDOW).map(|i| entry(i, Payload::Noop)));
        for i in RUN_WINDOW + 1..=3 * RUN_WINDOW {
            let mut e = misbehave(i, 1, r#"{"remember":null}"#);
            if let Payload::Command { actor, .. } = &mut e.payload {
                *actor = format!("m{}", (i - RUN_WINDOW - 1) % actors + 1);
            }
            log.push(e);
        }
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut plain = applier(dirs[0].path());
        let expected = plain.apply(&log).unwrap();
        let mut leader = applier(dirs[1].path());
        let w = RUN_WINDOW as usize;
        leader.apply(&log[..w]).unwrap();
        let ahead = leader.speculate(&log[w..], false, 1).unwrap();
        assert_eq!(ahead.len(), log.len() - w);
        assert_eq!(leader.spec_run.warm.len(), RUN_ACTORS_MAX);
        let outcomes = leader.execute(&log[w..]).unwrap();
        assert_eq!(outcomes, expected[w..]);
        assert_eq!(leader.run.warm.len(), RUN_ACTORS_MAX);
        assert_eq!(leader.applied(), plain.applied());
    }

    /// Mutation check of the determinism guard: a speculation made in a run
    /// the log does not have (told the term started where it did not) gets
    /// another answer than the apply, and applying it refuses.
    #[test]
    fn a_speculation_that_differs_from_the_apply_stops_the_applier() {
        let log = remember_log();
        let dir = tempfile::tempdir().unwrap();
        let mut leader = applier(dir.path());
        leader.apply(&log[..9]).unwrap();
        let ahead = leader.speculate(&log[9..10], false, 9).unwrap();
        assert_eq!(remembered(&ahead[0].1), Some(1));
        let err = leader.execute(&log[9..10]).unwrap_err();
        assert!(matches!(err, ApplyError::Diverged { index: 10 }), "{err}");
    }

    /// Every content limit at, and one past, its value: a committed
    /// outcome either way, never an error, and the state checkpoints
    /// (an over-long key used to reach LMDB and halt every node there).
    #[test]
    fn content_at_and_past_every_limit_is_an_outcome_and_the_state_checkpoints() {
        use crate::limits::{
            KEY_BYTES_MAX, MODULE_BYTES_MAX, RESPONSE_BYTES_MAX, WRITE_SET_BYTES_MAX,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path());
        let deploy = |index, actor: &str, wasm: Vec<u8>| {
            entry(
                index,
                Payload::Deploy {
                    actor: actor.into(),
                    wasm: wasm.into(),
                    by: None,
                },
            )
        };
        let kv = |index, actor: &str, json: serde_json::Value| {
            entry(
                index,
                Payload::Command {
                    actor: actor.into(),
                    client: None,
                    command: codec::to_cbor(&json).into(),
                    by: None,
                },
            )
        };
        let put = |index, key: String| {
            kv(
                index,
                "kv",
                serde_json::json!({"put": {"key": key, "value": "v"}}),
            )
        };
        let trapped = |kind: &str| Outcome::Trapped { trap: kind.into() };
        // A write-set of exactly the limit: keys `f0`..`f7` (2 bytes each).
        let each = WRITE_SET_BYTES_MAX / 8 - 2;
        let mut sizes = vec![each; 8];
        let fill = |index, sizes: &[usize]| {
            misbehave(
                index,
                1,
                &serde_json::json!({"fill": {"sizes": sizes}}).to_string(),
            )
        };
        let shout = |index, bytes: usize| {
            misbehave(
                index,
                1,
                &serde_json::json!({"shout": {"bytes": bytes}}).to_string(),
            )
        };
        let mut log = vec![
            deploy(1, "kv", understudy_examples::KV.to_vec()),
            deploy(2, "m", understudy_examples::MISBEHAVE.to_vec()),
            put(3, "k".repeat(KEY_BYTES_MAX)),
            put(4, "k".repeat(KEY_BYTES_MAX + 1)),
            put(5, "k".repeat(600)),
            kv(
                6,
                "",
                serde_json::json!({"put": {"key": "a", "value": "v"}}),
            ),
            kv(
                7,
                &"a".repeat(600),
                serde_json::json!({"put": {"key": "a", "value": "v"}}),
            ),
            deploy(8, "", understudy_examples::KV.to_vec()),
            deploy(9, "big", vec![0u8; MODULE_BYTES_MAX + 1]),
            fill(10, &sizes),
        ];
        sizes[7] += 1;
        log.push(fill(11, &sizes));
        log.push(shout(12, RESPONSE_BYTES_MAX - "loud".len()));
        log.push(shout(13, RESPONSE_BYTES_MAX - "loud".len() + 1));
        let outcomes: Vec<Outcome> = a
            .execute(&log)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert!(
            outcomes[..2].iter().all(Outcome::is_ok),
            "{:?}",
            &outcomes[..2]
        );
        assert!(
            outcomes[2].is_ok(),
            "a key of KEY_BYTES_MAX: {:?}",
            outcomes[2]
        );
        assert_eq!(outcomes[3], trapped("kv-too-large"));
        assert_eq!(outcomes[4], trapped("kv-too-large"));
        assert_eq!(outcomes[5], Outcome::NoSuchActor);
        assert_eq!(outcomes[6], Outcome::NoSuchActor);
        assert!(
            matches!(&outcomes[7], Outcome::DeployRefused { reason } if reason.contains("actor name"))
        );
        assert!(
            matches!(&outcomes[8], Outcome::DeployRefused { reason } if reason.contains("MODULE_BYTES_MAX"))
        );
        assert!(
            outcomes[9].is_ok(),
            "a write-set of WRITE_SET_BYTES_MAX: {:?}",
            outcomes[9]
        );
        assert_eq!(outcomes[10], trapped("write-set-too-large"));
        assert!(matches!(&outcomes[11], Outcome::Refused { code, .. } if code == "loud"));
        assert_eq!(outcomes[12], trapped(crate::sandbox::RESPONSE_TOO_LARGE));
        // Two values of 600 kB: a scan of both answers over the limit.
        let big = |index, key: &str| {
            kv(
                index,
                "kv",
                serde_json::json!({"put": {"key": key, "value": "v".repeat(600_000)}}),
            )
        };
        a.execute(&[big(14, "big1"), big(15, "big2")]).unwrap();
        // The state holding the longest key becomes durable.
        a.execute(&adds_for_kv(16, RUN_WINDOW)).unwrap();
        assert!(a.checkpoint().unwrap());
        assert_eq!(a.durable().index, RUN_WINDOW);
        let get = codec::to_cbor(&serde_json::json!({"get": {"key": "k".repeat(KEY_BYTES_MAX)}}));
        assert_eq!(
            a.query("kv", &get).unwrap().0,
            Outcome::Ok(codec::to_cbor(&Some("v")).into())
        );
        let get =
            codec::to_cbor(&serde_json::json!({"get": {"key": "k".repeat(KEY_BYTES_MAX + 1)}}));
        assert_eq!(a.query("kv", &get).unwrap().0, trapped("kv-too-large"));
        assert!(matches!(a.query("", &get), Err(QueryError::NoSuchActor(_))));
        let scan = codec::to_cbor(&serde_json::json!({"scan": {"prefix": "big", "limit": 1}}));
        assert!(
            a.query("kv", &scan).unwrap().0.is_ok(),
            "one value: under the limit"
        );
        let scan = codec::to_cbor(&serde_json::json!({"scan": {"prefix": "big", "limit": 2}}));
        assert_eq!(
            a.query("kv", &scan).unwrap().0,
            trapped(crate::sandbox::RESPONSE_TOO_LARGE)
        );
    }

    mod property {
        use super::*;
        use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
        use proptest::prelude::*;

        fn actor() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("kv".to_string()),
                Just("m".to_string()),
                Just(String::new()),
                Just("a".repeat(65)),
                Just("a".repeat(600)),
                "[A-Za-z0-9 _.\\-]{0,8}",
            ]
        }

        fn size() -> impl Strategy<Value = usize> {
            prop_oneof![
                Just(0),
                Just(1),
                Just(KEY_BYTES_MAX),
                Just(KEY_BYTES_MAX + 1),
                Just(600),
                0..64usize,
            ]
        }

        fn payload() -> impl Strategy<Value = Payload> {
            let command = prop_oneof![
                (size(), size()).prop_map(|(k, v)| serde_json::json!({"put": {"key": "k".repeat(k), "value": "v".repeat(v)}})),
                size().prop_map(|k| serde_json::json!({"delete": {"key": "k".repeat(k)}})),
                prop_oneof![Just(VALUE_BYTES_MAX), Just(VALUE_BYTES_MAX + 1), 0..4096usize]
                    .prop_map(|n| serde_json::json!({"fill": {"sizes": [n]}})),
                (0..3usize).prop_map(|n| serde_json::json!({"shout": {"bytes": n * 700_000}})),
                Just(serde_json::json!({"panic": {"key": "p"}})),
                Just(serde_json::json!({"remember": null})),
            ]
            .prop_map(|j| codec::to_cbor(&j));
            let bytes = proptest::collection::vec(any::<u8>(), 0..64);
            prop_oneof![
                4 => (actor(), prop_oneof![command, bytes]).prop_map(|(actor, command)| Payload::Command {
                    actor,
                    client: None,
                    command: command.into(),
                    by: None,
                }),
                1 => (actor(), prop_oneof![
                    Just(understudy_examples::KV.to_vec()),
                    Just(understudy_examples::MISBEHAVE.to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..64),
                ])
                .prop_map(|(actor, wasm)| Payload::Deploy { actor, wasm: wasm.into(), by: None }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10))]

            /// Content never halts the applier (BRIEF invariant 9):
            /// arbitrary actor names, keys, values, commands and module
            /// bytes, at and past every limit, are all applied as outcomes,
            /// the state checkpoints, and a second replica that applies the
            /// same log in other batches gets the same outcomes and digest.
            #[test]
            fn arbitrary_content_is_always_an_outcome_the_same_on_every_replica(
                payloads in proptest::collection::vec(payload(), 1..24),
                split in 1..8usize,
            ) {
                let mut log = vec![
                    entry(1, Payload::Deploy { actor: "kv".into(), wasm: understudy_examples::KV.to_vec().into(), by: None }),
                    entry(2, Payload::Deploy { actor: "m".into(), wasm: understudy_examples::MISBEHAVE.to_vec().into(), by: None }),
                ];
                log.extend(payloads.into_iter().enumerate().map(|(i, p)| entry(3 + i as Index, p)));
                let end = log.len() as Index;
                log.extend((end + 1..=RUN_WINDOW).map(|i| entry(i, Payload::Noop)));
                let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
                let (mut a, mut b) = (applier(d1.path()), applier(d2.path()));
                let one = a.execute(&log).expect("content never fails the applier");
                prop_assert!(a.checkpoint().expect("the state checkpoints"));
                let mut two = Vec::new();
                for chunk in log.chunks(split) {
                    two.extend(b.execute(chunk).expect("content never fails the applier"));
                }
                prop_assert!(b.checkpoint().expect("the state checkpoints"));
                prop_assert_eq!(one, two);
                prop_assert_eq!(a.applied(), b.applied());
            }
        }
    }

    fn adds_for_kv(from: Index, to: Index) -> Vec<Entry> {
        (from..=to)
            .map(|i| {
                entry(
                    i,
                    Payload::Command {
                        actor: "kv".into(),
                        client: None,
                        command: codec::to_cbor(
                            &serde_json::json!({"put": {"key": "n", "value": i.to_string()}}),
                        )
                        .into(),
                        by: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn execute_refuses_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applier(dir.path());
        assert!(matches!(
            a.execute(&log()[1..]),
            Err(ApplyError::Gap { applied: 0, got: 2 })
        ));
    }
}
