//! The node's client requests: each `ClientCall` becomes an event of the
//! node state (a write, a read, a promotion) or is answered here (status,
//! audit); deploys are compiled first, off the node's thread and within
//! their budget; auth changes go through the log; a forced promotion is
//! recorded in the data directory before the node leads alone.

use super::applier_actor::ReadAudit;
use super::clock::now_ms;
use super::shell::{ClientCall, Node, PendingRead};
use crate::api::{
    ApiError, ErrorCode, MembershipChange, ReadLevel, Request, Response, WriteConcern,
};
use crate::peer::PeerMessage;
use crate::replication::{GroupConfig, Role};
use crate::types::{NodeId, Outcome, Payload};
use actix::prelude::*;
use serde_bytes::ByteBuf;
use std::time::Duration;
use tokio::sync::oneshot;

impl Node {
    /// The operator's forced promotion for a group that lost its majority:
    /// this node becomes a group of one and leads. Every write that the lost
    /// majority acknowledged and this node lacks is lost — that is the
    /// decision being made, and it is logged as such. Recorded in a file of
    /// the data directory so that a restart keeps it. Refused while this
    /// node has signs that its group can still elect a leader without it
    /// ([`NodeState::may_still_elect`]).
    fn force_alone(&mut self, node: NodeId) -> Response {
        if node != self.config.node_id {
            return Response::Error(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "a forced promotion is sent to the node to promote (this is node {}, not {node})",
                    self.config.node_id
                ),
            ));
        }
        if let Err(why) = self.state.may_still_elect(now_ms()) {
            return Response::Error(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "forced promotion refused: {why}; a forced promotion is only for a group that lost its majority for good (use `promote` without --force to switch over)"
                ),
            ));
        }
        if self.state.log_busy() {
            return Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                "log writes are in flight; retry in a moment",
            ));
        }
        let path = self.config.forced_path();
        let core = self.state.core();
        // (The last word is read back at start: see `Node::start_parts`.)
        let record = format!(
            "forced promotion of node {} at {} ms since the epoch, term {}, last index {}\n",
            self.config.node_id,
            now_ms(),
            core.term(),
            core.last_index()
        );
        if let Err(e) =
            std::fs::write(&path, record).and_then(|()| std::fs::File::open(&path)?.sync_all())
        {
            return Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot record the forced promotion in {}: {e}",
                    path.display()
                ),
            ));
        }
        tracing::error!(
            node = self.config.node_id,
            term = core.term(),
            last_index = core.last_index(),
            "FORCED PROMOTION by the operator: this node now leads alone; acknowledged writes it lacks are lost, and the other members are no longer part of the group"
        );
        let group = GroupConfig {
            members: vec![self.config.node_id],
            ..self.config.group()
        };
        self.state.lead_alone(group, now_ms(), &self.log);
        Response::Promoting {
            node,
            term: self.state.core().term(),
        }
    }

    /// A deploy: refused at once unless this node leads and no other
    /// module is compiling; then normalized, compiled and checked as a
    /// machine on a thread of its own, within `module_compile_timeout_ms`,
    /// and only then proposed — so a module that does not compile, is no
    /// machine, or compiles too slowly never reaches the log, and the
    /// applier finds the artifact ready. The applier checks again,
    /// deterministically, when it applies the entry.
    fn deploy(
        &mut self,
        actor: String,
        wasm: Vec<u8>,
        by: Option<crate::auth::Principal>,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        use std::sync::atomic::Ordering;
        if self.state.core().role() != Role::Leader {
            let _ = reply.send(Response::Error(
                self.state.not_leader("only the leader takes deploys"),
            ));
            return;
        }
        if self.compiling.swap(true, Ordering::AcqRel) {
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Overloaded,
                "another module is being compiled (one at a time); retry later",
            )));
            return;
        }
        // The followers compile it at the same time (each on a compile
        // thread of its own): when the entry commits their artifact is
        // ready too, and their appliers do not stall on it.
        for p in self.config.peers.iter().map(|p| p.id) {
            self.peers.send(
                p,
                PeerMessage::Precompile {
                    wasm: ByteBuf::from(wasm.clone()),
                },
            );
        }
        let (done, compiled) = oneshot::channel();
        let compiler = self.compiler.clone();
        let compiling = self.compiling.clone();
        let spawned = std::thread::Builder::new()
            .name("understudy-compile".into())
            .spawn(move || {
                let compiled = compiler.compile(&wasm);
                // Free the slot before answering: the client's next deploy
                // may follow the answer at once (seen under load: it was
                // refused `Overloaded` by a slot about to be freed).
                compiling.store(false, Ordering::Release);
                let _ = done.send(compiled);
            });
        if let Err(e) = spawned {
            self.compiling.store(false, Ordering::Release);
            let _ = reply.send(Response::Error(ApiError::new(
                ErrorCode::Unavailable,
                format!("cannot start a compile thread: {e}"),
            )));
            return;
        }
        let budget_ms = self.config.module_compile_timeout_ms;
        let wait = tokio::time::timeout(Duration::from_millis(budget_ms), compiled);
        ctx.spawn(wait.into_actor(self).map(move |result, node, ctx| {
            let refused = |code, message: String| Response::Error(ApiError::new(code, message));
            let component = match result {
                Ok(Ok(Ok(component))) => component,
                Ok(Ok(Err(crate::sandbox::LoadError::OverLimit(m)))) => {
                    let _ = reply.send(refused(ErrorCode::TooLarge, m));
                    return;
                }
                Ok(Ok(Err(e))) => {
                    let _ = reply.send(refused(ErrorCode::BadRequest, e.to_string()));
                    return;
                }
                Ok(Err(_)) => {
                    let _ = reply.send(refused(
                        ErrorCode::Unavailable,
                        "the compile thread ended without an answer".into(),
                    ));
                    return;
                }
                Err(_) => {
                    tracing::warn!(actor, budget_ms, "a deployed module compiled too slowly");
                    let _ = reply.send(refused(
                        ErrorCode::TooLarge,
                        format!(
                            "the module took longer than module_compile_timeout_ms = {budget_ms} \
                             ms to compile on the leader; every replica would spend as long \
                             (smaller or simpler functions compile faster)"
                        ),
                    ));
                    return;
                }
            };
            let limit = crate::limits::MODULE_BYTES_MAX;
            let what = "the module as a component";
            if let Err(m) = crate::limits::check(what, component.len(), "MODULE_BYTES_MAX", limit) {
                let _ = reply.send(refused(ErrorCode::TooLarge, m.to_string()));
                return;
            }
            let hash = crate::sandbox::Sandbox::hash(&component);
            if !node.auth.get().module_allowed(&hash) {
                let _ = reply.send(refused(
                    ErrorCode::PermissionDenied,
                    format!(
                        "module {} is not on this group's allow-list (`understudy auth module \
                         allow`)",
                        crate::auth::hex(&hash)
                    ),
                ));
                return;
            }
            node.propose(
                Payload::Deploy {
                    actor,
                    wasm: ByteBuf::from(component),
                    by,
                },
                WriteConcern::Majority,
                reply,
                ctx,
            );
        }));
    }

    /// An `Auth` request: `Show` from the applied state; a change through
    /// the log (a new token's text is answered once it committed).
    fn auth_request(
        &mut self,
        req: crate::api::AuthRequest,
        by: Option<crate::auth::Principal>,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        let (change, token) = match req.to_change(now_ms()) {
            Err(e) => {
                let _ = reply.send(Response::Error(e));
                return;
            }
            Ok(None) => {
                let shown = crate::access::shown(&self.auth.get());
                let _ = reply.send(Response::AuthState(Box::new(shown)));
                return;
            }
            Ok(Some(x)) => x,
        };
        let id = match &change {
            crate::auth::AuthChange::TokenCreate { id, .. } => Some(id.clone()),
            _ => None,
        };
        let (written, answer) = oneshot::channel();
        self.propose(
            Payload::Auth { change, by },
            WriteConcern::Majority,
            written,
            ctx,
        );
        ctx.spawn(
            async move {
                let response = match (answer.await, id, token) {
                    (
                        Ok(Response::Written {
                            outcome: Outcome::Ok(_),
                            term,
                            index,
                        }),
                        Some(id),
                        Some(token),
                    ) => Response::TokenCreated {
                        id,
                        token,
                        term,
                        index,
                    },
                    (Ok(r), _, _) => r,
                    (Err(_), _, _) => Response::Error(ApiError::new(
                        ErrorCode::Unavailable,
                        "the node dropped the request",
                    )),
                };
                let _ = reply.send(response);
            }
            .into_actor(self),
        );
    }

    /// The leader asks this follower to compile a module it is about to
    /// propose ([`PeerMessage::Precompile`]): on a compile thread, one at a
    /// time (when one is running this is skipped, and the applier compiles
    /// at apply, as it would anyway); the artifact waits for the applier,
    /// which waits for a compile of it in progress rather than compile
    /// twice. Only from the leader this node follows, and only a module
    /// within `MODULE_BYTES_MAX`.
    pub(super) fn precompile(&mut self, from: NodeId, wasm: Vec<u8>) {
        use std::sync::atomic::Ordering;
        if self.state.core().leader() != Some(from) || self.state.core().role() == Role::Leader {
            tracing::warn!(
                from,
                "a module to precompile from a member that is not the leader: ignored"
            );
            return;
        }
        let limit = crate::limits::MODULE_BYTES_MAX;
        if wasm.len() > limit {
            tracing::warn!(
                from,
                bytes = wasm.len(),
                limit,
                "a module to precompile over MODULE_BYTES_MAX: ignored"
            );
            return;
        }
        if self.compiling.swap(true, Ordering::AcqRel) {
            tracing::info!(
                from,
                "a module to precompile while another compiles: left to the applier"
            );
            return;
        }
        let compiler = self.compiler.clone();
        let compiling = self.compiling.clone();
        let spawned = std::thread::Builder::new()
            .name("understudy-compile".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match compiler.compile(&wasm) {
                    Ok(_) => tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        "compiled a module the leader is deploying, ahead of its apply"
                    ),
                    Err(e) => tracing::info!(error = %e, "a module the leader is deploying does not compile here either"),
                }
                compiling.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.compiling.store(false, Ordering::Release);
            tracing::warn!(error = %e, "cannot start a compile thread");
        }
    }
}

/// A request's name for the log.
fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Deploy { .. } => "deploy",
        Request::Command { .. } => "command",
        Request::Query { .. } => "query",
        Request::Status => "status",
        Request::Promote { force: true, .. } => "promote --force",
        Request::Promote { .. } => "promote",
        Request::Authenticate { .. } => "authenticate",
        Request::Auth(_) => "auth",
        Request::Audit { .. } => "audit",
        Request::Membership { .. } => "membership",
        Request::Backup(crate::api::BackupRequest::Seal) => "backup seal",
        Request::Backup(crate::api::BackupRequest::Begin { .. }) => "backup",
        Request::Backup(_) => "backup chunk",
    }
}

impl Handler<ClientCall> for Node {
    type Result = ();
    fn handle(&mut self, msg: ClientCall, ctx: &mut Self::Context) {
        let ClientCall {
            request,
            reply,
            by,
            span,
        } = msg;
        let _in_request = span.enter();
        let kind = crate::metrics::kind_of(&request);
        if matches!(kind, "deploy" | "admin")
            || matches!(
                request,
                Request::Backup(crate::api::BackupRequest::Begin { .. })
            )
        {
            // Changes of the group are rare and worth a line each.
            tracing::info!(
                request = request_name(&request),
                user = by.as_ref().map(|p| p.user.as_str()),
                "admin request"
            );
        }
        if let Err(e) = request.admit() {
            let _ = reply.send(Response::Error(e));
            return;
        }
        match request {
            Request::Command {
                actor,
                command,
                client,
                concern,
            } => self.propose(
                Payload::Command {
                    actor,
                    client,
                    command,
                    by,
                },
                concern,
                reply,
                ctx,
            ),
            Request::Deploy { actor, wasm } => self.deploy(actor, wasm.into_vec(), by, reply, ctx),
            Request::Authenticate { .. } => {
                // Connections answer these themselves.
                let _ = reply.send(Response::Error(ApiError::new(
                    ErrorCode::BadRequest,
                    "authenticate on a client connection",
                )));
            }
            Request::Auth(req) => self.auth_request(req, by, reply, ctx),
            Request::Audit { limit } => {
                let read = self.applier.send(ReadAudit {
                    limit: limit as usize,
                });
                let within = Duration::from_millis(self.config.read_timeout_ms);
                ctx.spawn(
                    async move {
                        let answer = match tokio::time::timeout(within, read).await {
                            Ok(Ok(Ok(records))) => Response::Audit(records),
                            Ok(Ok(Err(e))) => Response::Error(ApiError::new(
                                ErrorCode::Unavailable,
                                format!("reading the audit trail: {e}"),
                            )),
                            Ok(Err(_)) => Response::Error(ApiError::new(
                                ErrorCode::Unavailable,
                                "the applier stopped",
                            )),
                            Err(_) => Response::Error(ApiError::new(
                                ErrorCode::Timeout,
                                "the applier did not answer within read_timeout_ms",
                            )),
                        };
                        let _ = reply.send(answer);
                    }
                    .into_actor(self),
                );
            }
            Request::Query {
                actor,
                request,
                level,
            } => {
                let read = PendingRead {
                    actor,
                    request,
                    reply,
                };
                let now = now_ms();
                let deadline = now + self.config.read_timeout_ms;
                self.state.query(read, level, now, deadline, &self.log);
                match level {
                    // A read index was asked: its message goes now.
                    ReadLevel::Lease | ReadLevel::Linearizable => self.drive(ctx),
                    _ => self.execute(ctx),
                }
            }
            Request::Status => {
                let _ = reply.send(Response::Status(Box::new(self.status())));
            }
            Request::Membership {
                change,
                client,
                joining,
            } => {
                if let Some(why) = joining.and_then(|j| self.join_mismatch(&j)) {
                    let _ = reply.send(Response::Error(ApiError::new(ErrorCode::BadRequest, why)));
                    return;
                }
                self.change_membership(change, client, reply, ctx)
            }
            Request::Backup(step) => self.backup(step, reply, ctx),
            Request::Promote { node, force: true } => {
                let response = self.force_alone(node);
                if matches!(response, Response::Promoting { .. }) {
                    self.audit_when_leading = Some((
                        format!(
                            "forced promotion of node {node}: it leads alone; writes it lacked are lost"
                        ),
                        by,
                    ));
                }
                let _ = reply.send(response);
                self.drive(ctx);
            }
            Request::Promote { node, force: false } => {
                if self.state.core().role() != Role::Leader {
                    let _ = reply.send(Response::Error(
                        self.state.not_leader("only the leader can hand over"),
                    ));
                    return;
                }
                if node == self.config.node_id {
                    // Already the leader: done, nothing to hand over.
                    let _ = reply.send(Response::Promoting {
                        node,
                        term: self.state.core().term(),
                    });
                    return;
                }
                if !self.state.core().membership().voters.contains(&node) {
                    let _ = reply.send(Response::Error(ApiError::new(
                        ErrorCode::BadRequest,
                        crate::replication::TransferError::NotAMember(node).to_string(),
                    )));
                    return;
                }
                // The audit record goes into the log first (the leader
                // takes no entries while it hands over); the handover
                // starts once the leader has it.
                let (logged, accepted) = oneshot::channel();
                let action = format!("promote node {node} (switchover)");
                self.propose(
                    Payload::Audit { action, by },
                    WriteConcern::Leader,
                    logged,
                    ctx,
                );
                ctx.spawn(accepted.into_actor(self).map(move |answer, me, ctx| {
                    let response = match answer {
                        Ok(Response::Accepted { .. } | Response::Written { .. }) => {
                            match me.state.transfer_leadership(node) {
                                Ok(()) => Response::Promoting {
                                    node,
                                    term: me.state.core().term(),
                                },
                                Err(crate::replication::TransferError::NotLeader { .. }) => {
                                    Response::Error(
                                        me.state.not_leader("only the leader can hand over"),
                                    )
                                }
                                Err(e) => Response::Error(ApiError::new(
                                    ErrorCode::BadRequest,
                                    e.to_string(),
                                )),
                            }
                        }
                        Ok(Response::Error(e)) => Response::Error(e),
                        Ok(other) => Response::Error(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("the audit record was answered {other:?}"),
                        )),
                        Err(_) => Response::Error(ApiError::new(
                            ErrorCode::Unavailable,
                            "the node dropped the audit record",
                        )),
                    };
                    let _ = reply.send(response);
                    me.drive(ctx);
                }));
            }
        }
    }
}

impl Node {
    /// A configuration change: the node state proposes it (or refuses
    /// it). One that takes this leader out of the voters (remove, demote,
    /// replace) needs another leader: this one hands over to the most
    /// up-to-date voter first and answers `NotLeader` naming it, and the
    /// client retries there with the same tag.
    /// Why a node that asks to join can never be a member of this group:
    /// another cluster id, or a peer protocol this node does not speak
    /// (the peers' hello would refuse it; see `LocalIdentity::check`).
    fn join_mismatch(&self, joining: &crate::api::Joining) -> Option<String> {
        use crate::peer::PEER_PROTOCOL_VERSION;
        if joining.cluster_id != self.config.cluster_id {
            // (The id is echoed shortened: it is whatever the caller sent.)
            let theirs: String = joining.cluster_id.chars().take(64).collect();
            return Some(format!(
                "the joining node belongs to cluster {theirs:?}, this group is cluster {:?}: \
                 start it with --cluster {} (cluster_id in a config file)",
                self.config.cluster_id, self.config.cluster_id
            ));
        }
        if joining.peer_protocol != PEER_PROTOCOL_VERSION {
            return Some(format!(
                "the joining node speaks peer protocol {}, this group speaks \
                 {PEER_PROTOCOL_VERSION}: run the same understudy version as the group",
                joining.peer_protocol
            ));
        }
        None
    }

    fn change_membership(
        &mut self,
        change: MembershipChange,
        client: Option<crate::types::ClientTag>,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        let me = self.config.node_id;
        let removes_me = match &change {
            MembershipChange::Remove { id }
            | MembershipChange::Demote { id }
            | MembershipChange::Rejoin { id } => *id == me,
            MembershipChange::Replace { out, .. } | MembershipChange::Swap { out, .. } => {
                *out == me
            }
            MembershipChange::Add { .. } | MembershipChange::Promote { .. } => false,
        };
        let core = self.state.core();
        if removes_me && core.role() == Role::Leader {
            let voters = &core.membership().voters;
            let next = core
                .followers(&self.log)
                .into_iter()
                .filter(|f| voters.contains(&f.id))
                .max_by_key(|f| (f.matched, std::cmp::Reverse(f.heard_ms_ago)))
                .map(|f| f.id);
            let answer = match next.map(|to| (to, self.state.transfer_leadership(to))) {
                Some((to, Ok(()))) => {
                    tracing::info!(to, %change, "handing leadership over before this change");
                    let mut e = self.state.not_leader(&format!(
                        "node {me} leads: it hands leadership to node {to} first; retry there"
                    ));
                    e.leader = Some(to);
                    e.leader_address = self.state.addresses().get(&to).cloned();
                    e
                }
                Some((_, Err(e))) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
                None => ApiError::new(
                    ErrorCode::BadRequest,
                    format!("node {me} is the only voter: it cannot leave its group"),
                ),
            };
            let _ = reply.send(Response::Error(answer));
            return self.drive(ctx);
        }
        self.state
            .change_membership(change, client, reply, now_ms(), &self.log);
        self.state.flush_speculation();
        self.drive(ctx);
    }
}
