//! The HTTP listener: our own accept loop over hyper's HTTP/1 connections, so that every
//! connection is bounded in time and number (`axum::serve` sets no timeout at all).
//!
//! - **Headers** must arrive within [`ConnectionLimits::header_timeout`] (10 s), counted from
//!   the connection's start or from the first byte of each later request.
//! - **Bodies** must keep arriving: each window of [`ConnectionLimits::body_timeout`] (30 s)
//!   must bring at least [`MIN_BODY_PROGRESS`] bytes or the end of the body; a body that stalls
//!   or trickles is cut (408), and the connection closed.
//! - A connection **idle** between requests is closed after
//!   [`ConnectionLimits::keep_alive_timeout`] (60 s); a response the client does not read for
//!   `body_timeout` ends the connection too.
//! - At most [`ConnectionLimits::max_connections`] connections are open at once; one more is
//!   answered `503` and closed at once (so the kernel's backlog never holds clients waiting).
//! - A declared `Content-Length` above [`ConnectionLimits::max_body`] is answered `413` before
//!   any of the body is read (SCIM's `/Bulk` alone is allowed its larger `bulk.maxPayloadSize`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The fewest bytes a request body must bring in each `body_timeout` window.
pub const MIN_BODY_PROGRESS: usize = 1024;

/// Timeouts and limits of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_body: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(open_files_limit()),
            max_body: crate::extract::MAX_BODY,
        }
    }
}

/// `min(10,000, limit - 256)`: room is left for the database, outbound connections and files.
pub fn default_max_connections(open_files_limit: Option<u64>) -> usize {
    let by_fds = open_files_limit.map_or(10_000, |l| l.saturating_sub(256).max(16));
    usize::try_from(by_fds.min(10_000)).unwrap_or(10_000)
}

/// The process's limit of open files (the soft limit), where the system tells it.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n";

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish (for at most 10 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our IO wrapper times headers out (hyper's own timer would also cut idle keep-alives).
    http.header_read_timeout(None).keep_alive(true).max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "too many connections: one refused");
            let _ = stream.try_write(BUSY);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Guarded::new(stream, limits));
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            async move { Ok::<_, Infallible>(handle(router, req, peer, limits).await) }
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("requests still running at shutdown were cut"),
    }
    Ok(())
}

async fn handle(router: Router, req: Request<Incoming>, peer: SocketAddr, limits: ConnectionLimits) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // SCIM's `/Bulk` takes more (`bulk.maxPayloadSize`), and SCIM clients are answered in SCIM.
    let scim = req.uri().path().strip_prefix("/scim/v2");
    let max_body = scim.map_or(limits.max_body, |path| limits.max_body.max(crate::scim_server::body_limit(path)));
    if declared.is_some_and(|n| n > max_body as u64) {
        let mut resp = match scim {
            Some(_) => crate::scim_server::Fail(crate::scim_server::too_large(max_body), None).into_response(),
            None => crate::Error::PayloadTooLarge { limit: max_body }.into_response(),
        };
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    let body = Body::new(SteadyBody::new(body, limits.body_timeout));
    match router.oneshot(Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// The request body arrived too slowly: less than [`MIN_BODY_PROGRESS`] bytes in a window.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly (less than {MIN_BODY_PROGRESS} bytes in {0:?})")]
pub struct BodyTooSlow(pub Duration);

/// A request body that must keep arriving.
struct SteadyBody {
    inner: Incoming,
    window: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl SteadyBody {
    fn new(inner: Incoming, window: Duration) -> Self {
        Self { inner, window, deadline: None, received: 0 }
    }
}

impl http_body::Body for SteadyBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let window = this.window;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len();
                    if this.received >= MIN_BODY_PROGRESS {
                        this.received = 0;
                        deadline.as_mut().reset(Instant::now() + window);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow(window))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where a connection is in its request/response cycle, as seen from its bytes.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request's headers, since this instant.
    Head(Instant),
    /// Headers read: the body (bounded by [`SteadyBody`]) and the handler.
    Body,
    /// A response was written; waiting for the next request since this instant.
    Idle(Instant),
}

/// A TCP stream that ends the connection when headers take too long or it idles too long.
struct Guarded {
    inner: TcpStream,
    limits: ConnectionLimits,
    phase: Phase,
    /// The last bytes read, to find the end of the headers (`\r\n\r\n` or `\n\n`).
    tail: u32,
    read_deadline: Pin<Box<Sleep>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn new(inner: TcpStream, limits: ConnectionLimits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            phase: Phase::Head(now),
            tail: 0,
            read_deadline: Box::pin(tokio::time::sleep_until(now + limits.header_timeout)),
            write_deadline: None,
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Phase::Idle(_) = self.phase {
            self.phase = Phase::Head(Instant::now());
            self.tail = 0;
        }
        if let Phase::Head(_) = self.phase {
            for b in bytes {
                self.tail = (self.tail << 8) | u32::from(*b);
                if self.tail == 0x0D0A_0D0A || self.tail & 0xFFFF == 0x0A0A {
                    self.phase = Phase::Body;
                    break;
                }
            }
        }
    }

    fn read_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Head(since) => Some(since + self.limits.header_timeout),
            Phase::Body => None,
            Phase::Idle(since) => Some(since + self.limits.keep_alive_timeout),
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                let new = filled[before..].to_vec();
                this.saw(&new);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.read_deadline() else { return Poll::Pending };
                if this.read_deadline.deadline() != deadline {
                    this.read_deadline.as_mut().reset(deadline);
                }
                match this.read_deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out(match this.phase {
                        Phase::Idle(_) => "keep-alive connection idle too long",
                        _ => "request headers took too long",
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.write_deadline = None;
                // A response (not an interim `100 Continue`) ends the request.
                if n > 0 && !data.starts_with(b"HTTP/1.1 1") {
                    this.phase = Phase::Idle(Instant::now());
                    // A read pending since the headers has no deadline yet: have it polled again.
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let window = this.limits.body_timeout;
                let deadline = this.write_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("the client does not read the response"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map(|b| b.starts_with(b"HTTP/1.1 1"));
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.write_deadline = None;
                if n > 0 && first == Some(false) {
                    this.phase = Phase::Idle(Instant::now());
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let window = this.limits.body_timeout;
                let deadline = this.write_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out("the client does not read the response"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_room_below_the_file_limit() {
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(1_048_576)), 10_000);
        assert_eq!(default_max_connections(None), 10_000);
        assert_eq!(default_max_connections(Some(100)), 16);
    }
}
