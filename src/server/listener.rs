//! Serving HTTP/1 connections with bounded time and memory per client.
//!
//! axum's own `serve` has no header-read timeout and no connection limit, so a
//! client that opens connections and sends nothing (or one byte a minute)
//! holds sockets, tasks and buffers for ever. Here each listener has:
//!
//! - a connection limit (a semaphore taken **before** `accept`: further
//!   clients wait in the kernel's accept backlog, costing nothing here);
//! - a header-read timeout (hyper's, which also closes idle keep-alive
//!   connections, since waiting for the next request is reading headers);
//! - a whole-request timeout for the handler including its body
//!   ([`super::request_deadline`], in the router so in-process tests see it);
//! - a write-stall timeout ([`WriteTimeout`]): a client that stops reading
//!   its response is cut after the request timeout instead of pinning a slot;
//! - a bounded read buffer (headers larger than [`MAX_BUF_BYTES`] are refused).
//!
//! [`serve_connections`] is generic over [`Accept`] so tests feed it
//! in-memory streams and run on tokio's paused clock.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

#[cfg(test)]
mod tests;

/// Per-listener limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's headers (also the longest an
    /// idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// Time a request has from its headers to its response (body read and
    /// handler), and the longest a response write may stall.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Largest read buffer per connection, so the largest request head. A push
/// webhook's headers are 1–3 KiB.
pub const MAX_BUF_BYTES: usize = 64 * 1024;

/// Pause after a failed `accept` (for example too many open files) so the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A source of connections.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection; `None` when there will be no more.
    fn accept(&mut self) -> impl Future<Output = Option<io::Result<Self::Io>>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> Option<io::Result<TcpStream>> {
        Some(TcpListener::accept(self).await.map(|(stream, _)| {
            // Responses are small and written at once: no Nagle delay.
            let _ = stream.set_nodelay(true);
            stream
        }))
    }
}

/// Serves `app` on every connection from `acceptor` until `shutdown`
/// completes (or the acceptor ends). Then in-flight requests are finished,
/// for at most the request timeout, and idle connections closed.
pub async fn serve_connections<A: Accept>(
    mut acceptor: A,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            () = &mut shutdown => break,
            next = acceptor.accept() => next,
        };
        match next {
            None => break,
            Some(Ok(io)) => {
                tasks.spawn(serve_one(
                    io,
                    app.clone(),
                    builder.clone(),
                    stop_rx.clone(),
                    limits.request_timeout,
                    permit,
                ));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
    drop(stop_tx);
    let drained = tokio::time::timeout(limits.request_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "HTTP connections still busy after the request timeout; closing them"
        );
        tasks.abort_all();
    }
}

async fn serve_one<I>(
    io: I,
    app: Router,
    builder: http1::Builder,
    mut stop: watch::Receiver<()>,
    request_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(WriteTimeout::new(io, request_timeout));
    let mut conn = pin!(builder.serve_connection(io, TowerToHyperService::new(app)));
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // Sender dropped: the server stops. Finish the request in flight.
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(request_timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        // Timeouts and clients going away are routine at this level.
        tracing::debug!(error = %e, timeout = e.is_timeout(), "HTTP connection closed");
    }
}

/// Fails a write (and so the connection) that cannot make progress for
/// `timeout`: the peer stopped reading. Reads pass through untouched (their
/// time is bounded by the header-read and request timeouts).
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when a write returned `Pending`: starts the stall timer if it
    /// is not running, and fails once it has run out.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client did not read the response for {}s",
                    timeout.as_secs_f64()
                ),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, r)
    }
}
