//! The node actor: the shell that owns the node's decisions
//! ([`NodeState`]), turns every message it gets (a client's request, a
//! peer's message, its threads' reports, the clock) into an event of the
//! state, and executes the effects the state queues — messages to peers,
//! batches for the log writer, work for the applier, answers to clients.
//! Compiling deploys (off its thread, within a budget) and recording a
//! forced promotion are its own.

use super::applier::Applier;
use super::applier_actor::{ApplierActor, Shown};
use super::clock::{TICK_MS, now_ms};
use super::config::NodeConfig;
use super::error::{InstallFailed, SendSnapshotError};
use super::messages::*;
use super::queries::{QUERIES_HANDED_PER_THREAD, QueryRunner, query_threads};
use super::snapshots::SnapshotMaker;
use super::writer::LogWriter;
use crate::api::{ApiError, ErrorCode, Request, Response, Status, WriteConcern};
use crate::config::LogKind;
use crate::peer::snapshot::NotInstalled;
use crate::peer::{PeerMessage, Peers};
use crate::replication::{Core, GroupConfig, Role};
use crate::sandbox::Sandbox;
use crate::storage::{self, DirLock, LogStore};
use crate::types::{Index, NodeId, Payload, Term};
use actix::prelude::*;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use understudy_core::client::WriteAnswer;
use understudy_core::membership::{MemberAddrs, Membership};
use understudy_core::node::{Effect, NodeState, Read, Settings, SnapshotIn};

/// A client request and where to send its answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientCall {
    /// The request.
    pub request: Request,
    /// The answer goes here.
    pub reply: oneshot::Sender<Response>,
    /// Who asked, as its connection verified it (`None`: nobody proved
    /// who it is). The connection has checked the request against the
    /// auth state; entries carry it so every replica checks again.
    pub by: Option<crate::auth::Principal>,
    /// The request's span (its id and the client's address): what the
    /// node logs while it handles the request carries them.
    pub span: tracing::Span,
}

/// A message from a peer (or news of its connection).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer(pub crate::peer::Inbound);

/// A read as the shell holds it: the query, and where to answer.
pub(crate) struct PendingRead {
    pub(super) actor: String,
    pub(super) request: ByteBuf,
    pub(super) reply: oneshot::Sender<Response>,
}

/// The node's decisions, with the shell's reply channels as handles.
pub(super) type State = NodeState<oneshot::Sender<Response>, PendingRead>;

/// What [`Node::start_parts`] started: the node actor, the identity its
/// peer acceptor checks hellos with (which records the peers'
/// incarnations in this node's log), the auth state the client
/// connections check requests against, and the node's metrics.
pub struct Started {
    /// The node actor.
    pub node: Addr<Node>,
    /// Its identity for the peer port.
    pub identity: crate::peer::LocalIdentity,
    /// The auth state it applied.
    pub auth: crate::access::AuthView,
    /// Its metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The node actor: the shell that executes what [`NodeState`] decides.
pub struct Node {
    pub(super) config: NodeConfig,
    /// This node's metrics (the writer and the applier feed them too).
    pub(super) metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Role, leader and quarantine last seen (elections, leader changes
    /// and quarantines are counted when they change).
    pub(super) seen: (Role, Option<NodeId>, bool),
    /// The last leaders seen (for the status and the cluster page).
    pub(super) leader_changes: std::collections::VecDeque<crate::api::LeaderChange>,
    /// The node's decisions (and the protocol core inside them).
    pub(super) state: State,
    /// The auth state of the applied entries (published by the applier).
    pub(super) auth: crate::access::AuthView,
    /// An audit record to log once this node leads (a forced promotion).
    pub(super) audit_when_leading: Option<(String, Option<crate::auth::Principal>)>,
    /// TLS for dialing members (snapshot transfers); `None`: plaintext.
    pub(super) tls: Option<crate::tls::NodeTls>,
    pub(super) writer: Addr<LogWriter>,
    pub(super) applier: Addr<ApplierActor>,
    pub(super) peers: Peers,
    /// What the log's meta holds of a data loss (see
    /// [`LogStore::recovering`]).
    pub(super) recovering_persisted: ((Term, Index), bool),
    /// The term, log position and configuration, for the peer
    /// acceptor's hello answers.
    pub(super) published: crate::peer::Published,
    /// The index of the configuration last published (and whose members
    /// the peer transport dials).
    pub(super) membership_seen: Option<Index>,
    /// Whom the peer acceptor takes hellos from (kept to the configuration
    /// in effect).
    pub(super) member_set: crate::peer::MemberSet,
    /// This actor's address, once started (for the applier's `QueryDone`).
    pub(super) me: Option<Addr<Node>>,
    /// The applier's part of a status (see [`ApplierActor::show`]).
    pub(super) shown: Shown,
    /// Compiles a deploy before it is proposed (see `deploy`).
    pub(super) compiler: crate::sandbox::Compiler,
    /// A compile is running (set by `deploy`, cleared by its thread when
    /// it ends, even after its deploy was answered).
    pub(super) compiling: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The durable log, read by the core for terms and log shipping.
    pub(super) log: LogStore,
    pub(super) snapshot_maker: Addr<SnapshotMaker>,
    /// A [`DriveSoon`] is queued.
    pub(super) drive_soon: bool,
    /// Online backups staged for clients to fetch.
    pub(super) backups: super::backups::staged::Staged,
    pub(super) _lock: DirLock,
}

impl Node {
    /// Open storage, build the sandbox and start the node's actors. Must be
    /// called inside a running actix system.
    pub fn start(config: NodeConfig) -> anyhow::Result<Addr<Node>> {
        Self::start_with(config, Vec::new(), None)
    }

    /// [`Node::start_parts`] without the acceptor's identity.
    pub fn start_with(
        config: NodeConfig,
        natives: Natives,
        client_address: Option<SocketAddr>,
    ) -> anyhow::Result<Addr<Node>> {
        Ok(Self::start_parts(config, natives, client_address)?.node)
    }

    /// [`Node::start`], with native machines standing in for the components
    /// of the given hashes (see [`crate::sandbox::NativeMachine`]), and the
    /// client address actually bound.
    ///
    /// Returns the identity the peer acceptor ([`crate::peer::serve`])
    /// checks hellos with, which records the peers' incarnations in this
    /// node's log, and the auth state the client connections check
    /// requests against.
    pub fn start_parts(
        config: NodeConfig,
        natives: Natives,
        client_address: Option<SocketAddr>,
    ) -> anyhow::Result<Started> {
        use anyhow::Context as _;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid node config: {e}"))?;
        let tls = match &config.tls {
            Some(settings) => Some(
                crate::tls::NodeTls::load(settings, config.node_id).context("setting up TLS")?,
            ),
            None => None,
        };
        let identity = config.identity();
        let (lock, log, state) = storage::open(&config.data_dir, &identity, &config.storage)
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
        let hard = log.hard_state()?;
        let applied_before = state.applied()?;
        if applied_before.index > log.last()?.0
            && let Some((index, term)) = state.installed_snapshot()?
            && index == applied_before.index
        {
            // A snapshot was installed but the node stopped before the log
            // was reset to it: finish the install.
            tracing::info!(index, term, "completing an interrupted snapshot install");
            // (The entry's timestamp is not known here: 0, as before
            // timestamps were kept with the compacted point.) The
            // configuration is the one the installed state recorded.
            let membership = state_membership(&state)?;
            log.reset_to(index, term, 0, membership.as_ref())?;
        }
        let last = log.last()?;
        let snapshot_state = state.clone();
        let mut sandbox = Sandbox::new(config.limits.clone())?;
        for (hash, machine) in natives {
            sandbox.register_native(hash, machine);
        }
        let compiler = sandbox.compiler();
        let applier = Applier::new(sandbox, state)?;
        let auth = applier.auth_view();
        let applied = applier.applied();
        anyhow::ensure!(
            applied.index <= last.0,
            "state is applied up to {} but the log ends at {}: the log of this data directory was lost",
            applied.index,
            last.0
        );
        // A forced promotion is recorded in FORCED-ALONE until the forced
        // configuration (this node alone) is in the log; from then on the
        // log says it, and the group grows back with `member add`.
        let memberships = log.memberships()?;
        let mut forced = config.forced_path().exists();
        // The record names the log's last index when it was forced: a
        // configuration after it is the forced one (or a later one).
        let forced_at = std::fs::read_to_string(config.forced_path())
            .ok()
            .and_then(|r| r.trim().rsplit(' ').next()?.parse::<Index>().ok());
        if forced && forced_at.is_some_and(|at| memberships.iter().any(|(i, _)| *i > at)) {
            tracing::info!(
                file = %config.forced_path().display(),
                "the forced configuration is in the log: the record of the forced promotion is no longer needed"
            );
            std::fs::remove_file(config.forced_path())
                .with_context(|| format!("removing {}", config.forced_path().display()))?;
            forced = false;
        }
        let group = if forced {
            tracing::error!(
                file = %config.forced_path().display(),
                "this node was promoted by force and leads alone until its forced configuration is in the log"
            );
            GroupConfig {
                members: vec![config.node_id],
                ..config.group()
            }
        } else {
            config.group()
        };
        let mut core = Core::new(group, hard, last, applied.index, rand::random());
        if !forced {
            core.restore_memberships(memberships);
        }
        let recovering = log.recovering()?;
        core.restore_recovering(recovering.0, recovering.1);
        let incarnation = log.incarnation()?;
        tracing::info!(
            node = config.node_id,
            members = ?config.members(),
            term = hard.term,
            last_index = last.0,
            applied_index = applied.index,
            "node starting"
        );
        let metrics = crate::metrics::Metrics::shared();
        let writer_log = log.clone();
        let quarantine = config.data_dir.join("quarantine");
        let writer_metrics = metrics.clone();
        let writer = SyncArbiter::start(1, move || LogWriter {
            log: writer_log.clone(),
            quarantine: quarantine.clone(),
            metrics: writer_metrics.clone(),
        });
        let maker_log = log.clone();
        let maker_root = config.data_dir.join("snapshots");
        let chunk_bytes = config
            .compaction
            .snapshot_chunk_bytes
            .max(SNAPSHOT_CHUNK_BYTES_MIN);
        let snapshot_maker = SyncArbiter::start(1, move || SnapshotMaker {
            state: snapshot_state.clone(),
            log: maker_log.clone(),
            root: maker_root.clone(),
            chunk_bytes,
        });
        let compaction = config.compaction;
        let batch_max = config.apply_batch_entries_max.max(1);
        let checkpoint_entries = config.checkpoint_entries_max.max(1);
        let applier_shown: Shown = std::sync::Arc::new(std::sync::Mutex::new((
            applied.index,
            applied.digest,
            applier.actors().unwrap_or_default(),
        )));
        let shown = applier_shown.clone();
        let applier_slot = std::sync::Mutex::new(Some(applier));
        let applier_log = log.clone();
        let applier_metrics = metrics.clone();
        let query_threads = query_threads();
        let queries = SyncArbiter::start(query_threads, || QueryRunner);
        let applier = SyncArbiter::start(1, move || ApplierActor {
            applier: applier_slot
                .lock()
                .expect("applier slot lock")
                .take()
                .expect("the applier thread is started once"),
            log: applier_log.clone(),
            batch_max,
            checkpoint_entries,
            checkpoint_due: false,
            compaction,
            ticks: 0,
            halted: None,
            fault: None,
            wanted: None,
            shown: applier_shown.clone(),
            queries: queries.clone(),
            metrics: applier_metrics.clone(),
        });
        let client_address = config
            .advertise_client
            .clone()
            .unwrap_or_else(|| client_address.unwrap_or(config.listen).to_string());
        let peer_address = config.advertise_peer.clone().unwrap_or_else(|| {
            config
                .peer_listen
                .map(|a| a.to_string())
                .unwrap_or_default()
        });
        let published = crate::peer::Published::default();
        let me = crate::peer::LocalIdentity {
            cluster_id: config.cluster_id.clone(),
            node_id: config.node_id,
            members: crate::peer::MemberSet::of(config.bootstrap_members()),
            client_address: client_address.clone(),
            peer_address: peer_address.clone(),
            snapshot_root: config.data_dir.join("snapshots"),
            snapshot_bytes_max: config.storage.map_size_bytes as u64,
            log_kind: config.log_kind,
            timing: config.timing,
            incarnation,
            book: Some(crate::peer::PeerBook::new(log.clone(), published.clone())),
            tls: tls.clone(),
        };
        let peer_addresses = config
            .peers
            .iter()
            .map(|p| (p.id, p.address.clone()))
            .collect();
        // Peers' answers to the hellos reach the node through a
        // channel: the dialers start before the node actor exists.
        let (answers_tx, mut answers_rx) = tokio::sync::mpsc::unbounded_channel();
        let peers = Peers::start(&me, &peer_addresses, move |from, answer| {
            let _ = answers_tx.send(HelloAnswered { from, answer });
        });
        let settings = Settings {
            log_kind: config.log_kind,
            pending_writes_max: config.pending_writes_max,
            write_timeout_ms: config.write_timeout_ms,
            read_timeout_ms: config.read_timeout_ms,
            query_slots: query_threads * QUERIES_HANDED_PER_THREAD,
            queries_waiting_max: crate::limits::QUERIES_WAITING_MAX,
            configured_addresses: config
                .peers
                .iter()
                .filter(|p| p.client_address.is_some())
                .map(|p| p.id)
                .collect(),
            promote_lag_entries: config.membership.promote_lag_entries,
            promote_lag_ms: config.membership.promote_lag_ms,
            catch_up_timeout_ms: config.membership.catch_up_timeout_ms,
            member_addrs: std::iter::once((
                config.node_id,
                MemberAddrs {
                    peer: peer_address.clone(),
                    client: client_address.clone(),
                },
            ))
            .chain(config.peers.iter().map(|p| {
                let addrs = MemberAddrs {
                    peer: p.address.clone(),
                    client: p.client_address.clone().unwrap_or_default(),
                };
                (p.id, addrs)
            }))
            .collect(),
        };
        let addresses = std::iter::once((config.node_id, client_address))
            .chain(
                config
                    .peers
                    .iter()
                    .filter_map(|p| p.client_address.clone().map(|a| (p.id, a))),
            )
            .collect();
        let node = Node {
            backups: super::backups::staged::Staged::new(&config.data_dir),
            metrics: metrics.clone(),
            seen: (Role::Follower, None, false),
            leader_changes: Default::default(),
            state: NodeState::new(core, settings, rand::random(), addresses),
            auth: auth.clone(),
            audit_when_leading: None,
            tls,
            recovering_persisted: recovering,
            published,
            membership_seen: None,
            member_set: me.members.clone(),
            compiler,
            shown,
            compiling: Default::default(),
            me: None,
            config,
            writer,
            applier,
            peers,
            log,
            snapshot_maker,
            drive_soon: false,
            _lock: lock,
        };
        let addr = node.start();
        let to_node = addr.clone();
        actix::spawn(async move {
            while let Some(lost) = answers_rx.recv().await {
                to_node.do_send(lost);
            }
        });
        Ok(Started {
            node: addr,
            identity: me,
            auth,
            metrics,
        })
    }

    /// One turn of the node's decisions, then their effects.
    pub(super) fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.state.core().role() == Role::Leader
            && let Some((action, by)) = self.audit_when_leading.take()
        {
            // Answered to nobody: the promotion was answered already.
            let (done, _) = oneshot::channel();
            self.state.propose(
                Payload::Audit { action, by },
                WriteConcern::Majority,
                done,
                now_ms(),
                &self.log,
            );
        }
        let core = self.state.core();
        let recovering = (core.recovery_floor(), !core.lost_terms_pending());
        if recovering != self.recovering_persisted {
            // Synced before this turn's messages leave: a vote this node
            // grants is judged by the floor it will also have after a
            // restart. (Once the terms are learned — the vote that holds
            // them is in this turn's hard state — a restart need not learn
            // them again.)
            if let Err(e) = self.log.set_recovering(recovering.0, recovering.1) {
                self.state
                    .halt(format!("cannot record that this node is recovering: {e}"));
                return self.execute(ctx);
            }
            self.recovering_persisted = recovering;
        }
        self.published.set(
            self.state.core().term(),
            self.state.core().durable_position(),
        );
        self.state.drive(now_ms(), &self.log);
        self.membership_changed();
        self.count_changes();
        self.execute(ctx);
    }

    /// Count elections, leader changes and quarantines as they happen.
    fn count_changes(&mut self) {
        use crate::metrics::OutcomeLabel;
        let core = self.state.core();
        let now = (
            core.role(),
            core.leader(),
            self.state.quarantined().is_some(),
        );
        let (role, leader, quarantined) = self.seen;
        let outcome = |o: &str| OutcomeLabel { outcome: o.into() };
        if now.0 != role {
            match now.0 {
                Role::Candidate => {
                    self.metrics
                        .elections
                        .get_or_create(&outcome("started"))
                        .inc();
                }
                Role::Leader => {
                    self.metrics.elections.get_or_create(&outcome("won")).inc();
                }
                _ => {}
            }
        }
        if let Some(new) = now.1.filter(|_| now.1 != leader) {
            self.metrics.leader_changes.inc();
            self.leader_changes.push_back(crate::api::LeaderChange {
                at_ms: now_ms(),
                term: core.term(),
                leader: new,
            });
            while self.leader_changes.len() > crate::api::LEADER_CHANGES_KEPT {
                self.leader_changes.pop_front();
            }
        }
        if now.2 && !quarantined {
            self.metrics.quarantines.inc();
        }
        self.seen = now;
    }

    /// Publish the configuration in effect when it changed.
    fn membership_changed(&mut self) {
        let core = self.state.core();
        let index = core.membership_index();
        if self.membership_seen == Some(index) {
            return;
        }
        self.membership_seen = Some(index);
        let membership = core.membership().clone();
        tracing::info!(index, %membership, "configuration in effect");
        // Whom to dial, and to take hellos from: the configuration's
        // members; before the log holds one, the configured peers (the
        // bootstrap list) — none for a node that joins.
        let configured: BTreeMap<NodeId, String> = self
            .config
            .peers
            .iter()
            .map(|p| (p.id, p.address.clone()))
            .collect();
        let dial: BTreeMap<NodeId, String> = if index == 0 && membership.voters.is_empty() {
            configured.clone()
        } else {
            membership
                .members()
                .into_iter()
                .filter(|&id| id != self.config.node_id)
                .filter_map(|id| {
                    // A configured address wins (this node's own view of
                    // the network); else the one the configuration names.
                    let named = membership.addrs.get(&id).map(|a| a.peer.clone());
                    let address = configured
                        .get(&id)
                        .cloned()
                        .or(named.filter(|a| !a.is_empty()))?;
                    Some((id, address))
                })
                .collect()
        };
        // Members the change took out still get the log from the leader
        // until they hold the change (see `Core::leaving`).
        let mut dial = dial;
        for id in core.leaving() {
            if let Some(a) = self.peers.address(id) {
                dial.entry(id).or_insert_with(|| a.to_string());
            }
        }
        let mut admitted: Vec<NodeId> = dial.keys().copied().collect();
        if !admitted.is_empty() || index > 0 {
            admitted.push(self.config.node_id);
        }
        self.member_set.set(admitted);
        self.peers.dial_only(&dial);
        self.published.set_membership(index, membership);
    }

    /// Execute the effects the state queued, in order; proposals waiting
    /// to be executed ahead of commit go once the mailbox is drained.
    pub(super) fn execute(&mut self, ctx: &mut Context<Self>) {
        if self.state.wants_speculation() && !self.drive_soon {
            // Actix polls a notification after the mailbox: a burst of
            // client writes becomes one log append, one append message per
            // follower and one execution, instead of one of each per write.
            self.drive_soon = true;
            ctx.notify(DriveSoon);
        }
        for effect in self.state.take_effects() {
            match effect {
                Effect::Send { to, message } => self.peers.send(to, PeerMessage::Raft(message)),
                Effect::ShareDigest { index, digest } => {
                    for p in self.config.peers.iter().map(|p| p.id) {
                        self.peers.send(p, PeerMessage::Digest { index, digest });
                    }
                }
                Effect::Persist(batch) => self.writer.do_send(Persist {
                    hard_state: batch.hard_state,
                    truncate_from: batch.truncate_from,
                    entries: batch.entries,
                    reply_to: ctx.address().recipient(),
                    fault_to: ctx.address().recipient(),
                }),
                Effect::ApplyUpTo(up_to) => self.applier.do_send(ApplyUpTo {
                    up_to,
                    reply_to: ctx.address().recipient(),
                    fault_to: ctx.address().recipient(),
                }),
                Effect::Speculate(batch) => self.applier.do_send(Speculate {
                    entries: batch.entries,
                    as_effects: batch.as_effects,
                    term_start: batch.term_start,
                    epoch: batch.epoch,
                    reply_to: ctx.address().recipient(),
                }),
                Effect::DiscardSpeculation => self.applier.do_send(DiscardSpeculation),
                Effect::SendSnapshot(peer) => self.send_snapshot(peer, ctx),
                Effect::Answer(reply, answer) => {
                    let _ = reply.send(written(answer));
                }
                Effect::RunRead(read) => self.hand_query(read),
                Effect::RefuseRead(read, e) => {
                    let _ = read.reply.send(Response::Error(e));
                }
            }
        }
    }

    /// Produce (or reuse) a snapshot and stream it to `peer`; on failure the
    /// core offers it again after a pause.
    pub(super) fn send_snapshot(&mut self, peer: NodeId, ctx: &mut Context<Self>) {
        // Where its lanes go: a configured address, or the one the
        // configuration names (a member added since the start).
        let Some(address) = self.peers.address(peer).map(str::to_string) else {
            tracing::warn!(peer, "no address to send a snapshot to");
            return self.state.snapshot_not_sent(peer);
        };
        let maker = self.snapshot_maker.clone();
        let cluster = self.config.cluster_id.clone();
        let me = self.config.node_id;
        let log_kind = self.config.log_kind;
        let timing = self.config.timing;
        let client_address = self.state.addresses().get(&me).cloned().unwrap_or_default();
        let tls = self.tls.clone();
        tracing::info!(peer, "follower needs compacted entries: sending a snapshot");
        let transfer = async move {
            let (dir, meta) = maker
                .send(MakeSnapshot)
                .await
                .map_err(|_| SendSnapshotError::MakerStopped)??;
            crate::peer::snapshot::send_snapshot(
                &address,
                &cluster,
                me,
                peer,
                &client_address,
                log_kind,
                timing,
                tls.as_ref(),
                &dir,
                &meta,
            )
            .await?;
            Ok::<Index, SendSnapshotError>(meta.index)
        };
        ctx.spawn(transfer.into_actor(self).map(move |result, node, ctx| {
            match result {
                Ok(index) => {
                    tracing::info!(peer, index, "snapshot delivered");
                    node.state.snapshot_sent(peer, index, &node.log);
                    node.drive(ctx);
                }
                Err(e) => {
                    node.state.snapshot_not_sent(peer);
                    tracing::warn!(peer, error = %e, "snapshot transfer failed; retrying in 1 s");
                    ctx.run_later(SNAPSHOT_RETRY, move |node, ctx| {
                        node.state.snapshot_failed(peer);
                        node.drive(ctx);
                    });
                }
            }
        }));
    }

    /// Install a complete incoming snapshot: state (applier), then the log
    /// reset (writer, after whatever it is writing), then the core.
    pub(super) fn install_snapshot(
        &mut self,
        from: crate::types::NodeId,
        meta: storage::SnapshotMeta,
        dir: PathBuf,
        done: oneshot::Sender<Result<(), crate::peer::snapshot::NotInstalled>>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = self
            .state
            .install_begin(from, meta.index, meta.term, &self.log)
        {
            let _ = done.send(Err(NotInstalled::because(e)));
            return;
        }
        let (applier, writer) = (self.applier.clone(), self.writer.clone());
        let (index, term, timestamp_ms) = (meta.index, meta.term, meta.last_timestamp_ms);
        let membership = meta.membership.clone().map(|m| *m);
        let installed_membership = membership
            .clone()
            .unwrap_or_else(|| Membership::of_voters(self.config.bootstrap_members()));
        let work = async move {
            let installed = applier
                .send(InstallSnapshot { dir, meta })
                .await
                .map_err(|_| InstallFailed::Stopped("the applier"))??;
            if installed {
                writer
                    .send(ResetLog {
                        index,
                        term,
                        timestamp_ms,
                        membership,
                    })
                    .await
                    .map_err(|_| InstallFailed::Stopped("the log writer"))?
                    .map_err(InstallFailed::LogReset)?;
            }
            Ok::<bool, InstallFailed>(installed)
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |result, node, ctx| match result {
                    Ok(installed) => {
                        if installed {
                            tracing::info!(index, term, "snapshot installed");
                        }
                        node.state
                            .install_end(Some((index, term, installed_membership)), &node.log);
                        node.drive(ctx);
                        let _ = done.send(Ok(()));
                    }
                    Err(e) => {
                        node.state.install_end(None, &node.log);
                        if let InstallFailed::LogReset(_) = e {
                            node.state.halt(e.to_string());
                        }
                        tracing::error!(error = %e, "snapshot install failed");
                        node.execute(ctx);
                        let _ = done.send(Err(NotInstalled::because(e)));
                    }
                }),
        );
    }
    /// A write: proposed through the state, its effects executed.
    pub(super) fn propose(
        &mut self,
        payload: Payload,
        concern: WriteConcern,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        self.state
            .propose(payload, concern, reply, now_ms(), &self.log);
        self.execute(ctx);
    }

    /// Hand `read` to the applier, which prepares it (pending writes,
    /// machine) and passes it to a query thread: the machine runs there,
    /// over a read snapshot taken then, never on the applier's thread, so
    /// queries that exhaust their fuel cannot delay writes. At most
    /// `query_threads` × [`QUERIES_HANDED_PER_THREAD`] queries are handed
    /// over at once; the rest wait in the state, in order.
    pub(super) fn hand_query(&mut self, read: Read<PendingRead>) {
        let Some(me) = &self.me else {
            let _ = read.handle.reply.send(Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                "starting",
            )));
            return self.state.query_done(now_ms(), |r| r.reply.is_closed());
        };
        self.applier.do_send(RunQuery {
            actor: read.handle.actor,
            request: read.handle.request,
            reply: read.handle.reply,
            done: QueryDoneGuard {
                to: me.clone().recipient(),
                halted: None,
            },
            deadline_ms: read.deadline_ms,
        });
    }

    pub(super) fn status(&self) -> Status {
        // The applier's part as it last published it (an apply or a
        // compile in progress does not hold a status up).
        let shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let (state, core) = (&self.state, self.state.core());
        Status {
            node_id: self.config.node_id,
            cluster_id: self.config.cluster_id.clone(),
            role: core.role(),
            term: core.term(),
            leader: core.leader(),
            last_index: core.last_index(),
            log_first_index: crate::replication::LogRead::first_index(&self.log),
            commit_index: core.commit_index(),
            applied_index: shown.0,
            digest: shown.1.iter().map(|b| format!("{b:02x}")).collect(),
            actors: shown.2.iter().map(|(n, _)| n.clone()).collect(),
            actor_modules: shown
                .2
                .iter()
                .map(|(name, r)| crate::api::ActorInfo {
                    name: name.clone(),
                    module: crate::auth::hex(&r.module),
                    deployed_at: r.deployed_at,
                })
                .collect(),
            pending_writes: state.pending_writes(),
            vote: core.vote(),
            leader_heard_ms_ago: core.leader_heard_ms_ago(),
            leader_address: state.leader_address(),
            followers: core.followers(&self.log),
            // A halted node (its state damaged, or applying failed) serves
            // no reads either.
            quarantined: state.quarantined().or(state.halted()).cloned(),
            recovering_until: core.recovering_until(),
            fault: state.fault().cloned(),
            snapshot_in: state.snapshot_in().map(|s| crate::api::SnapshotProgress {
                index: s.index,
                chunks_done: s.chunks_done,
                chunks: s.chunks,
                bytes: s.bytes,
            }),
            leader_changes: self.leader_changes.iter().cloned().collect(),
            recent_writes: self.metrics.recent_writes(),
            client_addresses: state.addresses().clone(),
            membership: core.membership().clone(),
            membership_index: core.membership_index(),
        }
    }
}

/// A writer's answer on the wire.
fn written(answer: WriteAnswer) -> Response {
    match answer {
        WriteAnswer::Written {
            outcome,
            term,
            index,
        } => Response::Written {
            outcome,
            term,
            index,
        },
        WriteAnswer::Accepted { term, index } => Response::Accepted { term, index },
        WriteAnswer::Refused(e) => Response::Error(e),
    }
}

/// The smallest snapshot chunk, whatever `snapshot_chunk_bytes` says.
const SNAPSHOT_CHUNK_BYTES_MIN: usize = 4096;

/// How long after a failed snapshot transfer the core may offer one again.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

impl Actor for Node {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address());
        self.state.tick(now_ms(), &self.log);
        self.drive(ctx);
        ctx.run_interval(Duration::from_millis(TICK_MS), |node, ctx| {
            node.state.tick(now_ms(), &node.log);
            node.drive(ctx);
            node.state.expire(now_ms());
            node.execute(ctx);
            node.applier.do_send(Checkpoint {
                reply_to: ctx.address().recipient(),
                fault_to: ctx.address().recipient(),
            });
        });
    }
}

/// A peer answered this node's hello: with its term, and, if it knew this
/// node under another incarnation, the commit index the group had when
/// this node came back without its data.
#[derive(Message)]
#[rtype(result = "()")]
struct HelloAnswered {
    from: NodeId,
    answer: crate::peer::HelloAnswer,
}

impl Handler<QueryDone> for Node {
    type Result = ();
    fn handle(&mut self, done: QueryDone, ctx: &mut Self::Context) {
        if let Some(why) = done.halted {
            self.state.halt(why);
        }
        self.state.query_done(now_ms(), |r| r.reply.is_closed());
        self.execute(ctx);
    }
}

impl Handler<HelloAnswered> for Node {
    type Result = ();
    fn handle(&mut self, msg: HelloAnswered, ctx: &mut Self::Context) {
        let a = msg.answer;
        self.state
            .hello_answered(msg.from, a.term, a.log, a.membership, a.lost_data);
        self.drive(ctx);
    }
}

impl Handler<StorageFault> for Node {
    type Result = ();
    fn handle(&mut self, msg: StorageFault, ctx: &mut Self::Context) {
        self.state.storage_fault(msg.source, msg.reason);
        self.drive(ctx);
    }
}

impl Handler<Speculated> for Node {
    type Result = ();
    fn handle(&mut self, msg: Speculated, ctx: &mut Self::Context) {
        self.state
            .speculated(msg.epoch, msg.result, now_ms(), &self.log);
        match self.config.log_kind {
            // The entries it prepared were appended: they go out now.
            LogKind::Row => self.drive(ctx),
            LogKind::Statement => self.execute(ctx),
        }
    }
}

impl Handler<FromPeer> for Node {
    type Result = ();
    fn handle(&mut self, msg: FromPeer, ctx: &mut Self::Context) {
        use crate::peer::Inbound;
        let from = match &msg.0 {
            Inbound::Connected { from, .. }
            | Inbound::Snapshot { from, .. }
            | Inbound::PeerLostData { from }
            | Inbound::Message { from, .. } => *from,
        };
        self.state.heard_from(from, now_ms());
        match msg.0 {
            Inbound::Connected {
                from,
                client_address,
                peer_address,
            } => {
                self.state.peer_connected(from, client_address);
                // (The acceptor took its hello: it is a member, or this
                // node knows no configuration yet.)
                self.peers.dial_back(from, &peer_address);
            }
            Inbound::PeerLostData { from } => {
                self.state.peer_lost_data(from, &self.log);
                self.drive(ctx);
            }
            Inbound::Message {
                from,
                msg: PeerMessage::Raft(msg),
            } => {
                self.state.step(from, msg, &self.log);
                self.drive(ctx);
            }
            Inbound::Snapshot { from, progress } => match progress {
                crate::peer::snapshot::Progress::Chunk { meta, done } => {
                    self.state.snapshot_progress(SnapshotIn {
                        index: meta.index,
                        chunks_done: done,
                        chunks: meta.chunks,
                        bytes: meta.bytes,
                    });
                }
                crate::peer::snapshot::Progress::Complete { meta, dir, done } => {
                    self.install_snapshot(from, meta, dir, done, ctx);
                }
            },
            Inbound::Message {
                from,
                msg: PeerMessage::Precompile { wasm },
            } => self.precompile(from, wasm.into_vec()),
            Inbound::Message {
                from,
                msg: PeerMessage::Digest { index, digest },
            } => {
                self.state.digest_from_peer(from, index, digest);
                self.execute(ctx);
            }
        }
    }
}

impl Handler<Persisted> for Node {
    type Result = ();
    fn handle(&mut self, msg: Persisted, ctx: &mut Self::Context) {
        match msg.result {
            Ok(last) => {
                self.state.persisted(msg.hard_state_seq, last, &self.log);
                self.drive(ctx);
            }
            Err(e) => {
                self.state.persist_failed(e.to_string());
                self.execute(ctx);
            }
        }
    }
}

impl Handler<DriveSoon> for Node {
    type Result = ();
    fn handle(&mut self, _: DriveSoon, ctx: &mut Self::Context) {
        self.drive_soon = false;
        self.state.flush_speculation();
        self.drive(ctx);
    }
}

impl Handler<Applied> for Node {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Self::Context) {
        match msg.0 {
            Ok((outcomes, applied, samples)) => {
                self.state
                    .applied(applied.index, outcomes, samples, now_ms(), &self.log);
            }
            Err(e) => self.state.halt(format!("applying failed: {e}")),
        }
        self.execute(ctx);
    }
}

/// Native machines by the component hash they stand in for.
pub type Natives = Vec<(
    crate::sandbox::ModuleHash,
    std::sync::Arc<dyn crate::sandbox::NativeMachine>,
)>;

/// The configuration the state recorded when it applied the last
/// configuration entry (or installed a snapshot holding one).
fn state_membership(
    state: &crate::storage::StateStore,
) -> anyhow::Result<Option<understudy_core::membership::Membership>> {
    use crate::kv::KvRead;
    let snap = state.snapshot()?;
    let Some(raw) = snap.get(&crate::access::membership_key()) else {
        return Ok(None);
    };
    Ok(Some(crate::codec::decode("configuration", &raw)?))
}
