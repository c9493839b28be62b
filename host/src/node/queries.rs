//! The query threads: a query's machine runs there, over a read snapshot
//! of the applied state, never on the applier's thread.

use super::applier;
use super::clock::now_ms;
use super::messages::{Damaged, RunPrepared, RunQuery};
use crate::api::{ApiError, ErrorCode, Response};
use crate::storage;
use crate::types::{Index, Outcome};
use actix::prelude::*;

/// Runs queries the applier prepared, on threads of their own
/// ([`query_threads`] of them): a query's machine runs over a read snapshot
/// of the applied state while the applier goes on applying, so queries
/// never delay writes, whatever fuel they burn.
pub struct QueryRunner;

impl Actor for QueryRunner {
    type Context = SyncContext<Self>;
}

impl Handler<RunPrepared> for QueryRunner {
    type Result = ();
    fn handle(&mut self, mut msg: RunPrepared, _: &mut Self::Context) {
        if msg.reply.is_closed() {
            return; // the client is gone
        }
        if now_ms() >= msg.deadline_ms {
            let message = "the query waited for a query thread past read_timeout_ms";
            let _ = msg
                .reply
                .send(Response::Error(ApiError::new(ErrorCode::Timeout, message)));
            return;
        }
        let actor = msg.job.actor().to_string();
        let result = msg.job.run(&msg.request);
        if matches!(result, Err(applier::QueryError::Stale)) {
            msg.again.do_send(RunQuery {
                actor,
                request: msg.request,
                reply: msg.reply,
                done: msg.done,
                deadline_ms: msg.deadline_ms,
            });
            return;
        }
        let (response, halted) = query_response(result);
        if let Some(why) = &halted {
            msg.damaged_to.do_send(Damaged { why: why.clone() });
        }
        msg.done.halted = halted;
        let _ = msg.reply.send(response);
    }
}

/// Most threads that run queries, whatever the machine's cores.
pub const QUERY_THREADS_MAX: usize = 8;

/// Queries handed over per query thread at once: a query thread finds the
/// next ones prepared when it finishes one (the hand-over passes the
/// applier, which prepares each between applies). A prepared query holds
/// no LMDB reader until it runs (it takes its snapshot then).
pub const QUERIES_HANDED_PER_THREAD: usize = 64;

/// Threads that run queries: one fewer than the cores (the applier, the
/// node and the log writer need one), at least one, at most
/// [`QUERY_THREADS_MAX`]. A node runs this many queries at once.
pub fn query_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.saturating_sub(1).clamp(1, QUERY_THREADS_MAX)
}

/// A query's answer, and why the applier must halt if the query found the
/// state damaged.
pub(super) fn query_response(
    result: Result<(Outcome, Index), applier::QueryError>,
) -> (Response, Option<String>) {
    match result {
        Ok((outcome, applied_index)) => (
            Response::Read {
                outcome,
                applied_index,
            },
            None,
        ),
        Err(applier::QueryError::NoSuchActor(a)) => (
            Response::Error(ApiError::new(
                ErrorCode::NoSuchActor,
                format!("no actor named {a:?}"),
            )),
            None,
        ),
        Err(applier::QueryError::Storage(e @ storage::StorageError::StateCorrupt { .. })) => {
            // Quarantine: nothing more is applied or served here; the
            // node halts (and steps down).
            tracing::error!(error = %e, "state damaged at rest: applying halted");
            let why = e.to_string();
            (
                Response::Error(ApiError::new(ErrorCode::Unavailable, why.clone())),
                Some(why),
            )
        }
        Err(e) => (
            Response::Error(ApiError::new(ErrorCode::Unavailable, e.to_string())),
            None,
        ),
    }
}
