//! Dispatch: what the driver does with each frame it reads. Requests go to their
//! handlers (inline when synchronous, spawned when they wait, queued when sequential)
//! past the execute hooks; replies complete calls; stream frames go to their streams.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tracing::Instrument;

use super::panics::Caught;
use super::{Connection, SendCheck};
use crate::error::Error;
use crate::frame::{Frame, Kind, FLAG_DOWNLOAD, FLAG_UPLOAD};
use crate::handler::{
    Context as HandlerContext, InFlight, Request, Responder, Router, Shape, SyncHandler,
};
use crate::hooks::{self, CommandInfo, Completion};
use crate::proto::CommandKind;
use crate::sequential::Sequential;
use crate::stats::Counters;
use crate::stream::{Dir, Incoming, StreamHead, Streams, WantStream};

impl SendCheck for Router {
    fn check_send(
        &self,
        conn: &Connection,
        command: &str,
        kind: CommandKind,
        payload_len: usize,
    ) -> Result<(), Error> {
        let info = CommandInfo {
            command,
            kind,
            payload_len,
            conn,
        };
        hooks::check(&self.hooks.send, &info)
    }
}

/// What the driver dispatches with, held by the driver alone: the router of handlers and
/// hooks, and the count of this connection's requests being handled.
pub(crate) struct Dispatcher {
    pub(super) router: Arc<Router>,
    pub(super) in_flight: Arc<InFlight>,
}

impl Dispatcher {
    /// Back-pressure on the peer: whether too many of its requests are being handled
    /// (on a sequential connection: queued calls over their byte budget, or too many
    /// handlers in flight besides those queued), or too many of its replies wait unread.
    /// While so, the reader takes no new call and so stops reading.
    /// `congested`: whether the protocol state's outgoing queue is over twice
    /// `max_pending_write` (taken under the lock the caller already held).
    pub(super) fn peer_over_limits(&self, conn: &Connection, congested: bool) -> bool {
        let config = &conn.shared.config;
        let queued = conn.shared.sequential.as_ref();
        let waiting = queued.map_or(0, Sequential::waiting);
        queued.is_some_and(Sequential::is_full)
            || self.in_flight.count().saturating_sub(waiting) >= config.max_handlers_in_flight
            || congested
    }

    pub(super) async fn wait_peer_under_limits(&self, conn: &Connection) {
        let config = &conn.shared.config;
        let queued = conn.shared.sequential.as_ref();
        if let Some(queued) = queued {
            queued.room().await;
        }
        let waiting = queued.map_or(0, Sequential::waiting);
        self.in_flight
            .below(config.max_handlers_in_flight.saturating_add(waiting))
            .await;
        conn.wait_until_uncongested().await;
    }

    /// Acts on a request (a `Call` or a `Send`) without waiting: past the execute hooks
    /// to its handler, or answered with an error.
    pub(super) fn dispatch(&self, conn: &Connection, mut frame: Frame) {
        Counters::bump(&conn.shared.counters.calls_in, 1);
        let is_call = frame.kind == Kind::Call;
        let payload_len = frame.payload.len();
        if conn.shared.sequential.is_some() {
            // A queued call may wait long: its payload gets an allocation of its own instead
            // of pinning the read buffer it was cut from, so the queue holds what it counts.
            frame.payload = Bytes::copy_from_slice(&frame.payload);
        }
        if let Some(rate) = &self.router.rate {
            if let Err(e) = rate.check_command(conn, frame.command()) {
                Counters::bump(&conn.shared.counters.commands_vetoed, 1);
                if is_call {
                    conn.reply_error(frame.id, &e);
                    if frame.flags & FLAG_UPLOAD != 0 {
                        conn.refuse_upload(frame.id);
                    }
                }
                crate::rate::close_if_struck_out(conn);
                return;
            }
        }
        let hooks = &self.router.hooks;
        let info = CommandInfo {
            command: frame.command(),
            kind: CommandKind::of(frame.kind, frame.flags),
            payload_len: frame.payload.len(),
            conn,
        };
        if !hooks.execute.is_empty() {
            if let Err(e) = hooks::check(&hooks.execute, &info) {
                Counters::bump(&conn.shared.counters.commands_vetoed, 1);
                if is_call {
                    conn.reply_error(frame.id, &e);
                    if frame.flags & FLAG_UPLOAD != 0 {
                        conn.refuse_upload(frame.id);
                    }
                }
                return;
            }
        }
        let Some(handler) = self.router.get(frame.command()) else {
            if is_call {
                conn.reply_error(frame.id, &Error::UnknownCommand(frame.command().to_owned()));
            } else {
                Counters::bump(&conn.shared.counters.errors_in, 1);
            }
            return;
        };
        if let Some(sync) = handler.as_sync() {
            if conn.shared.sequential.is_none() && hooks.complete.is_empty() && frame.flags == 0 {
                self.run_sync(conn, sync, frame, is_call);
                return;
            }
        }
        let shape = handler.shape();
        let request = match self.open_request_streams(conn, &frame, shape) {
            Ok(request) => request,
            Err(e) => {
                if is_call {
                    conn.reply_error(frame.id, &e);
                } else {
                    Counters::bump(&conn.shared.counters.errors_in, 1);
                }
                if frame.flags & FLAG_UPLOAD != 0 && is_call {
                    conn.refuse_upload(frame.id);
                }
                return;
            }
        };
        let responder = if is_call {
            let r = Responder::new(conn.clone(), frame.id, &self.in_flight);
            if shape == Shape::Download {
                r.for_download()
            } else {
                r
            }
        } else {
            Responder::one_way(&self.in_flight)
        };
        let responder = if hooks.complete.is_empty() {
            responder
        } else {
            responder.track(Completion::new(conn, &info, &hooks.complete))
        };
        let ctx = HandlerContext::new(conn.clone(), self.router.state.clone());
        // Per-call span at debug level: when disabled (the usual case) this is one check of
        // a cached flag and the handler's future is not wrapped.
        let span = tracing::debug_span!("call", command = info.command, kind = ?info.kind);
        let Some(Some(mut work)) = conn.catch_handler(|| handler.invoke(ctx, request, responder))
        else {
            return;
        };
        if !span.is_disabled() {
            work = Box::pin(work.instrument(span));
        }
        if let Some(queue) = &conn.shared.sequential {
            // A panic fails that one call, not the queue.
            queue.push(Box::pin(Caught::new(conn.clone(), work)), payload_len);
            return;
        }
        // Most handlers finish at once: poll inline and spawn only if the handler waits.
        // The spawned task polls again with its own waker, as the future contract requires.
        let mut cx = Context::from_waker(Waker::noop());
        if let Some(Poll::Pending) = conn.catch_handler(|| work.as_mut().poll(&mut cx)) {
            // In the connection's span (a clone of a disabled span costs nothing).
            let task = Caught::new(conn.clone(), work).instrument(conn.shared.span.clone());
            conn.shared.runtime.spawn(Box::pin(task));
        }
    }

    /// Runs a synchronous handler at once and queues its answer: no responder, no future.
    /// It counts as in flight while it runs, like any handler.
    fn run_sync(&self, conn: &Connection, handler: &dyn SyncHandler, frame: Frame, is_call: bool) {
        let _in_flight = self.in_flight.enter();
        let ctx = HandlerContext::new(conn.clone(), self.router.state.clone());
        let id = frame.id;
        let mut answered = false;
        let ran = catch_unwind(AssertUnwindSafe(|| {
            handler.call(&ctx, frame.payload, &mut |result| {
                answered = true;
                match result {
                    Ok(reply) if is_call => conn.reply(id, reply),
                    Err(e) if is_call => conn.reply_error(id, e),
                    _ => {}
                }
            })
        }));
        if ran.is_err() {
            conn.handler_panicked();
            if is_call && !answered {
                conn.reply_error(id, &Error::NoResponse);
            }
        }
    }

    /// Checks that a request has the shape its handler takes, and opens its stream: the
    /// upload it carries, or the download it asks for.
    fn open_request_streams(
        &self,
        conn: &Connection,
        frame: &Frame,
        shape: Shape,
    ) -> Result<Request, Error> {
        let asked = match frame.flags & (FLAG_UPLOAD | FLAG_DOWNLOAD) {
            0 => Shape::Call,
            FLAG_UPLOAD if frame.kind == Kind::Call => Shape::Upload,
            FLAG_DOWNLOAD if frame.kind == Kind::Call => Shape::Download,
            flags => {
                return Err(Error::BadRequest(format!(
                    "a {:?} frame with stream flags {flags:#04x}",
                    frame.kind
                )))
            }
        };
        if asked != shape {
            return Err(Error::BadRequest(format!(
                "`{}` takes {}, not {}",
                frame.command(),
                shape.describe(),
                asked.describe()
            )));
        }
        let mut request = Request {
            payload: frame.payload.clone(),
            body: None,
            offset: 0,
        };
        if shape == Shape::Call {
            return Ok(request);
        }
        let config = &conn.shared.config;
        let bad = |e: postcard::Error| Error::BadRequest(format!("bad stream request: {e}"));
        let room = |streams: &Streams| {
            if streams.len() >= config.max_streams {
                return Err(Error::BadRequest(format!(
                    "too many streams open on this connection (limit {})",
                    config.max_streams
                )));
            }
            Ok(())
        };
        if shape == Shape::Upload {
            let head = StreamHead::decode(&frame.payload).map_err(bad)?;
            let key = (Dir::Upload, frame.id);
            let state = conn.with_streams(|streams| {
                room(streams)?;
                streams.open_incoming(key, config.stream_window as u64)
            })?;
            request.body = Some(Incoming::new(conn.clone(), key, state, head));
        } else {
            let want: WantStream<'_> = postcard::from_bytes(&frame.payload).map_err(bad)?;
            conn.with_streams(|streams| {
                room(streams)?;
                streams.open_outgoing((Dir::Download, frame.id))
            })?;
            request.payload = frame.payload.slice_ref(want.meta);
            request.offset = want.offset;
        }
        Ok(request)
    }
}
