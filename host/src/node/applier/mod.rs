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
//!
//! One concept per file: `runs.rs` (which commands share an instance),
//! `views.rs` (what a machine reads through), `change.rs` (what an entry
//! changes, the digest chained over it, the row kind's `Effects` check),
//! `machines.rs` (loaded machines), `query.rs` (a query prepared here and
//! run on a query thread). This file holds the `Applier` and all its
//! methods — execute, checkpoint, execution ahead of commit, snapshots,
//! auth at an entry's index — which share its private state (the pending
//! batch, the runs, the caches); that is why it is over 800 lines.

mod change;
mod machines;
mod query;
mod runs;
#[cfg(test)]
mod tests;
mod views;

pub use change::{DIGEST_SAMPLE_EVERY, INVALID_EFFECTS, chain_digest};
pub use query::{QueryError, QueryJob};
pub use runs::{RUN_ACTORS_MAX, RUN_WINDOW, opens_window};

use change::Change;
use machines::MachineCache;
use runs::{Chain, Run};
use views::{ActorView, BatchView, prefixed};

use crate::access::{self, AuthView};
use crate::auth::{Action, AuthState, Principal};
use crate::codec;
use crate::sandbox::view::{self, KvRead, WriteSet};
use crate::sandbox::{CallContext, Sandbox, SandboxError};
use crate::storage::{self, AppliedState, StateBatch, StateStore, StorageError, session_key};
use crate::types::{Entry, Index, Outcome, Payload, Term, validate_actor_name};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
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
    spec: Option<ExecutedAhead>,
    /// The applier's runs (committed entries).
    run: Run,
    /// The leader's runs (entries executed ahead of their commit).
    spec_run: Run,
    /// Commands run through their machine (not answered from a session or
    /// taken from a speculation), for tests.
    calls: u64,
    /// Machine calls run since [`Self::take_calls`], and their fuel, by
    /// actor (for the metrics).
    call_fuel: BTreeMap<String, (u64, u64)>,
    /// The auth state last decoded and the index of the auth change it
    /// is from (`None`: auth never configured). Entries check against the
    /// state their view holds; it rarely changes, so a command reads only
    /// the 8-byte version to know the cached state is the one.
    auth_cache: (Option<Index>, Arc<AuthState>),
    /// Where the auth state of the applied entries is published.
    auth_view: AuthView,
}

/// Entries the leader executed ahead of their commit (row log kind): the
/// executed state plus their changes, and the changes in log order.
struct ExecutedAhead {
    batch: StateBatch,
    queue: std::collections::VecDeque<(Index, Term, Change)>,
}

impl Applier {
    /// An applier over `state`, resuming from its applied index.
    /// Machine calls run since the last take, by actor: (calls, fuel).
    pub fn take_calls(&mut self) -> BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut self.call_fuel)
    }

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
            call_fuel: BTreeMap::new(),
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
            Payload::Config(m) => {
                // In effect since it was appended (the core saw to it);
                // applying records it in the state, for snapshots, and in
                // the audit trail.
                let mut done = Change::of_outcome(Outcome::Ok(ByteBuf::new()));
                done.writes
                    .insert(access::membership_key(), Some(codec::encode(&**m)));
                Self::audit(
                    &view,
                    &mut done.writes,
                    ctx,
                    &None,
                    format!("configuration: {m}"),
                )?;
                Ok((done, view))
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
        // (At most one record per actor: bounded by the actors.)
        let used = self.call_fuel.entry(actor.to_string()).or_default();
        *used = (used.0 + 1, used.1 + call.fuel_used);
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
        let spec = self.spec.get_or_insert_with(|| ExecutedAhead {
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
            // A configuration is logged as it is, in both kinds: every
            // node's core reads it from its log.
            let logged = if as_effects && !matches!(e.payload, Payload::Config(_)) {
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
        self.spec = (!queue.is_empty()).then_some(ExecutedAhead { batch, queue });
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

    /// Deployed actors and their records, including those deployed by
    /// entries not yet checkpointed.
    pub fn actors(&self) -> Result<Vec<(String, storage::ActorRecord)>, StorageError> {
        let mut all: BTreeMap<String, storage::ActorRecord> =
            self.state.actors()?.into_iter().collect();
        all.extend(
            self.pending
                .actors
                .iter()
                .map(|(n, r)| (n.clone(), r.clone())),
        );
        Ok(all.into_iter().collect())
    }
}

/// Most bytes of entries one step of a replay reads from the log (at
/// least one entry).
const REPLAY_READ_BYTES_MAX: usize = 4 << 20;

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
