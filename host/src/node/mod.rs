//! The node: actix actors that execute what the sans-IO [`Core`] decides.
//!
//! * [`Node`] (on the system arbiter, with the network) owns the core, the
//!   table of clients waiting for their writes, and the queue of entries
//!   waiting for the log writer. It never blocks.
//! * [`LogWriter`] (its own thread) persists the hard state and appends
//!   entries; while one fsync runs, new proposals accumulate and go out
//!   together in the next transaction (group commit).
//! * [`ApplierActor`] (its own thread) applies committed entries through the
//!   sandbox in batches and answers queries.
//! * Connections ([`server`]) turn frames into [`ClientCall`] messages.
//!
//! The log and the state are separate LMDB environments, so the writer's
//! fsync of batch N+1 overlaps the applier's work on batch N.

pub mod applier;
pub mod server;

use crate::api::{ApiError, ErrorCode, Request, Response, Status};
use crate::replication::{Core, GroupConfig, ProposeError, Ready};
use crate::sandbox::{Sandbox, SandboxLimits};
use crate::storage::{self, AppliedState, DirLock, HardState, Identity, LogStore, StorageOptions};
use crate::types::{Entry, Index, NodeId, Outcome, Payload, Term, validate_actor_name};
use actix::prelude::*;
use applier::Applier;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The group's cluster id (a node refuses a data dir of another cluster).
    pub cluster_id: String,
    /// Client API address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// LMDB settings.
    #[serde(default)]
    pub storage: StorageOptions,
    /// Sandbox limits (must be equal on every node of a group).
    #[serde(default)]
    pub limits: SandboxLimits,
    /// Most writes waiting for commit before new ones are refused.
    #[serde(default = "default_pending_writes_max")]
    pub pending_writes_max: usize,
    /// Most entries executed in one applier step.
    #[serde(default = "default_apply_batch_max")]
    pub apply_batch_entries_max: usize,
    /// Executed entries kept in memory before their effects are made
    /// durable in one state transaction (also done every tick).
    #[serde(default = "default_checkpoint_entries_max")]
    pub checkpoint_entries_max: usize,
}

fn default_checkpoint_entries_max() -> usize {
    8192
}

fn default_pending_writes_max() -> usize {
    100_000
}

fn default_apply_batch_max() -> usize {
    1024
}

/// Interval of the node's clock tick (elections later; checkpoints now).
const TICK_MS: u64 = 20;

/// Most entries written in one log transaction.
const APPEND_BATCH_ENTRIES_MAX: usize = 4096;

impl NodeConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(node_id: NodeId, cluster_id: &str, listen: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            node_id,
            cluster_id: cluster_id.to_string(),
            listen,
            data_dir,
            storage: StorageOptions::default(),
            limits: SandboxLimits::default(),
            pending_writes_max: default_pending_writes_max(),
            apply_batch_entries_max: default_apply_batch_max(),
            checkpoint_entries_max: default_checkpoint_entries_max(),
        }
    }

    fn identity(&self) -> Identity {
        Identity {
            format_version: storage::FORMAT_VERSION,
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
        }
    }
}

/// A client request and where to send its answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientCall {
    /// The request.
    pub request: Request,
    /// The answer goes here.
    pub reply: oneshot::Sender<Response>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Persist {
    hard_state: Option<HardState>,
    truncate_from: Option<Index>,
    entries: Vec<Entry>,
    reply_to: Recipient<Persisted>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Persisted(Result<Option<(Index, Term)>, String>);

#[derive(Message)]
#[rtype(result = "()")]
struct ApplyUpTo {
    up_to: Index,
    reply_to: Recipient<Applied>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Applied(Result<(Vec<(Index, Outcome)>, AppliedState), String>);

/// Make executed entries durable in the state store (sent on every tick).
#[derive(Message)]
#[rtype(result = "()")]
struct Checkpoint {
    reply_to: Recipient<Applied>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct RunQuery {
    actor: String,
    request: ByteBuf,
    reply: oneshot::Sender<Response>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct FillStatus {
    status: Status,
    reply: oneshot::Sender<Response>,
}

/// Persists the hard state and log entries on its own thread.
pub struct LogWriter {
    log: LogStore,
}

impl Actor for LogWriter {
    type Context = SyncContext<Self>;
}

impl Handler<Persist> for LogWriter {
    type Result = ();
    fn handle(&mut self, msg: Persist, _: &mut Self::Context) {
        let last = msg.entries.last().map(|e| (e.index, e.term));
        let result = self
            .log
            .persist_with(msg.hard_state.as_ref(), msg.truncate_from, &msg.entries)
            .map(|()| last)
            .map_err(|e| e.to_string());
        msg.reply_to.do_send(Persisted(result));
    }
}

/// Applies committed entries and answers queries on its own thread.
pub struct ApplierActor {
    applier: Applier,
    log: LogStore,
    batch_max: usize,
    checkpoint_entries: usize,
    halted: Option<String>,
}

impl Actor for ApplierActor {
    type Context = SyncContext<Self>;
}

impl Handler<ApplyUpTo> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: ApplyUpTo, _: &mut Self::Context) {
        if self.halted.is_some() {
            return;
        }
        while self.applier.applied().index < msg.up_to {
            let from = self.applier.applied().index + 1;
            let to = msg.up_to.min(from + self.batch_max as u64 - 1);
            let executed = self
                .log
                .read(from, to, 16 << 20)
                .map_err(|e| e.to_string())
                .and_then(|entries| {
                    if entries.first().map(|e| e.index) != Some(from) {
                        return Err(format!("committed entry {from} is missing from the log"));
                    }
                    self.applier.execute(&entries).map_err(|e| e.to_string())
                });
            let outcomes = match executed {
                Ok(x) => x,
                Err(e) => return self.halt(e, from, &msg.reply_to),
            };
            // Answer before the state is durable: the outcomes are final (a
            // deterministic function of the durable log), and a crash before
            // the checkpoint re-executes these entries from the log.
            msg.reply_to
                .do_send(Applied(Ok((outcomes, self.applier.applied()))));
            if self.applier.pending_entries() >= self.checkpoint_entries
                && let Err(e) = self.applier.checkpoint()
            {
                return self.halt(e.to_string(), from, &msg.reply_to);
            }
        }
    }
}

impl Handler<Checkpoint> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: Checkpoint, _: &mut Self::Context) {
        if self.halted.is_some() {
            return;
        }
        if let Err(e) = self.applier.checkpoint() {
            let index = self.applier.durable().index + 1;
            self.halt(e.to_string(), index, &msg.reply_to);
        }
    }
}

impl ApplierActor {
    fn halt(&mut self, error: String, index: Index, reply_to: &Recipient<Applied>) {
        tracing::error!(%error, index, "applying halted");
        self.halted = Some(error.clone());
        reply_to.do_send(Applied(Err(error)));
    }
}

impl Handler<RunQuery> for ApplierActor {
    type Result = ();
    fn handle(&mut self, msg: RunQuery, _: &mut Self::Context) {
        if let Some(why) = &self.halted {
            // The executed-but-not-durable effects are gone with the halt;
            // answering from the durable state could go back in time.
            let error = ApiError::new(ErrorCode::Unavailable, format!("applying halted: {why}"));
            let _ = msg.reply.send(Response::Error(error));
            return;
        }
        let response = match self.applier.query(&msg.actor, &msg.request) {
            Ok((outcome, applied_index)) => Response::Read {
                outcome,
                applied_index,
            },
            Err(applier::QueryError::NoSuchActor(a)) => Response::Error(ApiError::new(
                ErrorCode::NoSuchActor,
                format!("no actor named {a:?}"),
            )),
            Err(e) => Response::Error(ApiError::new(ErrorCode::Unavailable, e.to_string())),
        };
        let _ = msg.reply.send(response);
    }
}

impl Handler<FillStatus> for ApplierActor {
    type Result = ();
    fn handle(&mut self, mut msg: FillStatus, _: &mut Self::Context) {
        let applied = self.applier.applied();
        msg.status.applied_index = applied.index;
        msg.status.digest = applied.digest.iter().map(|b| format!("{b:02x}")).collect();
        msg.status.actors = self.applier.actors().unwrap_or_default();
        let _ = msg.reply.send(Response::Status(msg.status));
    }
}

/// The node actor.
pub struct Node {
    config: NodeConfig,
    core: Core,
    writer: Addr<LogWriter>,
    applier: Addr<ApplierActor>,
    /// Clients waiting for their entry to be applied: index → (term, reply).
    waiters: BTreeMap<Index, (Term, oneshot::Sender<Response>)>,
    /// The durable log, read by the core for terms and log shipping.
    log: LogStore,
    persist_hard_state: Option<HardState>,
    persist_truncate_from: Option<Index>,
    persist_queue: Vec<Entry>,
    persist_in_flight: bool,
    halted: Option<String>,
    _lock: DirLock,
}

impl Node {
    /// Open storage, build the sandbox and start the node's actors. Must be
    /// called inside a running actix system.
    pub fn start(config: NodeConfig) -> anyhow::Result<Addr<Node>> {
        Self::start_with(config, Vec::new())
    }

    /// [`Node::start`], with native machines standing in for the components
    /// of the given hashes (see [`crate::sandbox::NativeMachine`]).
    pub fn start_with(config: NodeConfig, natives: Natives) -> anyhow::Result<Addr<Node>> {
        use anyhow::Context as _;
        let identity = config.identity();
        let (lock, log, state) = storage::open(&config.data_dir, &identity, &config.storage)
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
        let hard = log.hard_state()?;
        let last = log.last()?;
        let mut sandbox = Sandbox::new(config.limits.clone())?;
        for (hash, machine) in natives {
            sandbox.register_native(hash, machine);
        }
        let applier = Applier::new(sandbox, state)?;
        let applied = applier.applied();
        anyhow::ensure!(
            applied.index <= last.0,
            "state is applied up to {} but the log ends at {}: the log of this data directory was lost",
            applied.index,
            last.0
        );
        let core = Core::new(
            GroupConfig::new(config.node_id, vec![config.node_id]),
            hard,
            last,
            applied.index,
            rand::random(),
        );
        tracing::info!(
            node = config.node_id,
            term = hard.term,
            last_index = last.0,
            applied_index = applied.index,
            "node starting"
        );
        let writer_log = log.clone();
        let writer = SyncArbiter::start(1, move || LogWriter {
            log: writer_log.clone(),
        });
        let batch_max = config.apply_batch_entries_max.max(1);
        let checkpoint_entries = config.checkpoint_entries_max.max(1);
        let applier_slot = std::sync::Mutex::new(Some(applier));
        let applier_log = log.clone();
        let applier = SyncArbiter::start(1, move || ApplierActor {
            applier: applier_slot
                .lock()
                .expect("applier slot lock")
                .take()
                .expect("the applier thread is started once"),
            log: applier_log.clone(),
            batch_max,
            checkpoint_entries,
            halted: None,
        });
        let node = Node {
            config,
            core,
            writer,
            applier,
            waiters: BTreeMap::new(),
            log,
            persist_hard_state: None,
            persist_truncate_from: None,
            persist_queue: Vec::new(),
            persist_in_flight: false,
            halted: None,
            _lock: lock,
        };
        Ok(node.start())
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Execute the core's outputs.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let Ready {
            hard_state,
            truncate_from,
            append,
            messages,
            apply_up_to,
            reads: _,
            failed_reads: _,
        } = self.core.ready();
        // A group of one sends nothing; the peer transport is the next stage.
        debug_assert!(messages.is_empty(), "no peer transport yet");
        if let Some(hs) = hard_state {
            self.persist_hard_state = Some(hs);
        }
        if let Some(t) = truncate_from {
            // Queued entries at or after the cut are replaced, too.
            self.persist_queue.retain(|e| e.index < t);
            self.persist_truncate_from = Some(self.persist_truncate_from.map_or(t, |p| p.min(t)));
        }
        self.persist_queue.extend(append);
        self.flush_persist(ctx);
        if let Some(up_to) = apply_up_to {
            self.applier.do_send(ApplyUpTo {
                up_to,
                reply_to: ctx.address().recipient(),
            });
        }
    }

    fn flush_persist(&mut self, ctx: &mut Context<Self>) {
        if self.persist_in_flight
            || (self.persist_queue.is_empty() && self.persist_hard_state.is_none())
        {
            return;
        }
        let n = self.persist_queue.len().min(APPEND_BATCH_ENTRIES_MAX);
        let entries: Vec<Entry> = self.persist_queue.drain(..n).collect();
        self.persist_in_flight = true;
        self.writer.do_send(Persist {
            hard_state: self.persist_hard_state.take(),
            truncate_from: self.persist_truncate_from.take(),
            entries,
            reply_to: ctx.address().recipient(),
        });
    }

    fn halt(&mut self, why: String) {
        tracing::error!(reason = %why, "node halted: refusing writes");
        self.halted = Some(why.clone());
        for (_, (_, reply)) in std::mem::take(&mut self.waiters) {
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                why.clone(),
            )));
        }
    }

    fn propose(
        &mut self,
        payload: Payload,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(why) = &self.halted {
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                format!("node halted: {why}"),
            )));
            return;
        }
        if self.waiters.len() >= self.config.pending_writes_max {
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Overloaded,
                format!("{} writes already waiting; retry later", self.waiters.len()),
            )));
            return;
        }
        match self
            .core
            .propose(payload, Self::now_ms(), rand::random(), &self.log)
        {
            Ok(index) => {
                self.waiters.insert(index, (self.core.term(), reply));
                self.drive(ctx);
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = reply.send(Response::Error(ApiError {
                    code: ErrorCode::NotLeader,
                    message: "this node is not the leader".into(),
                    leader,
                }));
            }
        }
    }

    fn status(&self) -> Status {
        Status {
            node_id: self.config.node_id,
            cluster_id: self.config.cluster_id.clone(),
            role: self.core.role(),
            term: self.core.term(),
            leader: self.core.leader(),
            last_index: self.core.last_index(),
            commit_index: self.core.commit_index(),
            applied_index: self.core.applied_index(),
            digest: String::new(),
            actors: Vec::new(),
            pending_writes: self.waiters.len(),
        }
    }
}

impl Actor for Node {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.core.tick(Self::now_ms(), &self.log);
        self.drive(ctx);
        ctx.run_interval(Duration::from_millis(TICK_MS), |node, ctx| {
            node.core.tick(Self::now_ms(), &node.log);
            node.drive(ctx);
            node.applier.do_send(Checkpoint {
                reply_to: ctx.address().recipient(),
            });
        });
    }
}

impl Handler<ClientCall> for Node {
    type Result = ();
    fn handle(&mut self, msg: ClientCall, ctx: &mut Self::Context) {
        let ClientCall { request, reply } = msg;
        match request {
            Request::Command {
                actor,
                command,
                client,
                concern: _,
            } => self.propose(
                Payload::Command {
                    actor,
                    client,
                    command,
                },
                reply,
                ctx,
            ),
            Request::Deploy { actor, wasm } => {
                // Refuse bad modules before they reach the log; the applier
                // checks again, deterministically, when it applies.
                let checked = validate_actor_name(&actor)
                    .and_then(|()| Sandbox::normalize(&wasm).map_err(|e| e.to_string()));
                match checked {
                    Ok(component) => self.propose(
                        Payload::Deploy {
                            actor,
                            wasm: ByteBuf::from(component),
                        },
                        reply,
                        ctx,
                    ),
                    Err(message) => {
                        let _ = reply.send(Response::Error(ApiError::new(
                            ErrorCode::BadRequest,
                            message,
                        )));
                    }
                }
            }
            Request::Query { actor, request } => {
                self.applier.do_send(RunQuery {
                    actor,
                    request,
                    reply,
                });
            }
            Request::Status => self.applier.do_send(FillStatus {
                status: self.status(),
                reply,
            }),
        }
    }
}

impl Handler<Persisted> for Node {
    type Result = ();
    fn handle(&mut self, msg: Persisted, ctx: &mut Self::Context) {
        self.persist_in_flight = false;
        match msg.0 {
            Ok(last) => {
                if let Some((index, term)) = last {
                    self.core.persisted(index, term, &self.log);
                }
                self.drive(ctx);
            }
            Err(e) => self.halt(format!("log write failed: {e}")),
        }
    }
}

impl Handler<Applied> for Node {
    type Result = ();
    fn handle(&mut self, msg: Applied, _: &mut Self::Context) {
        match msg.0 {
            Ok((outcomes, applied)) => {
                self.core.applied(applied.index);
                for (index, outcome) in outcomes {
                    if let Some((term, reply)) = self.waiters.remove(&index) {
                        let _ = reply.send(Response::Written {
                            outcome,
                            term,
                            index,
                        });
                    }
                }
            }
            Err(e) => self.halt(format!("applying failed: {e}")),
        }
    }
}

/// Native machines by the component hash they stand in for.
pub type Natives = Vec<(
    crate::sandbox::ModuleHash,
    std::sync::Arc<dyn crate::sandbox::NativeMachine>,
)>;

/// Start a node and its listener inside the current actix system; returns
/// the node's address and the bound listen address.
pub async fn run(config: NodeConfig) -> anyhow::Result<(Addr<Node>, SocketAddr)> {
    run_with(config, Vec::new()).await
}

/// [`run`] with native machines (benchmarks).
pub async fn run_with(
    config: NodeConfig,
    natives: Natives,
) -> anyhow::Result<(Addr<Node>, SocketAddr)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    let node = Node::start_with(config, natives)?;
    server::serve(listener, node.clone());
    Ok((node, bound))
}
