//! Connection handling on in-memory streams and tokio's paused clock: every
//! duration below is virtual, so the assertions on elapsed time are exact
//! and cannot flake.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Accept, Limits, serve_connections};
use crate::metrics::Metrics;
use crate::server::{AppState, Endpoints, ServerConfig, router};
use crate::service::{SharedStatus, Triggers};
use crate::source::GitRef;

/// Connections handed over by the test, as a listener would.
struct Chan(mpsc::Receiver<DuplexStream>);

impl Accept for Chan {
    type Io = DuplexStream;
    async fn accept(&mut self) -> Option<io::Result<DuplexStream>> {
        self.0.recv().await.map(Ok)
    }
}

const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
    max_connections: 1,
};

struct Harness {
    connect: mpsc::Sender<DuplexStream>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Harness {
    fn start(limits: Limits) -> Self {
        let state = AppState::new(
            Metrics::new(),
            SharedStatus::default(),
            Arc::new(Triggers::default()),
            GitRef::Branch("main".into()),
            None,
            &ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        );
        let app = router(state, Endpoints::All, limits.request_timeout);
        let (connect, rx) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_connections(Chan(rx), app, limits, async move {
            let _ = stopped.await;
        }));
        Self {
            connect,
            stop: Some(stop),
            server,
        }
    }

    /// A new client connection with `buffer` bytes of socket buffer.
    async fn connect(&self, buffer: usize) -> DuplexStream {
        let (client, server) = tokio::io::duplex(buffer);
        self.connect.send(server).await.unwrap();
        client
    }
}

/// Reads until the server closes the connection; fails the test (instead of
/// hanging it) when that does not happen within an hour of virtual time.
async fn read_all(c: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_hours(1), c.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: nodewave\r\nConnection: close\r\n\r\n";

#[tokio::test(start_paused = true)]
async fn a_client_in_time_is_served() {
    let h = Harness::start(LIMITS);
    let mut c = h.connect(4096).await;
    c.write_all(HEALTHZ).await.unwrap();
    let response = read_all(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
}

/// Slow loris: one header line every 4 s never completes the head; the
/// connection is closed when the header-read timeout runs out.
#[tokio::test(start_paused = true)]
async fn a_client_sending_headers_slowly_is_cut() {
    let h = Harness::start(LIMITS);
    let mut c = h.connect(4096).await;
    let started = Instant::now();
    c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let step = Duration::from_secs(4);
    let mut cut = None;
    for n in 0..100 {
        tokio::time::sleep(step).await;
        if c.write_all(format!("x-slow-{n}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("the slow client was never disconnected");
    // Noticed at the first write after the timeout.
    assert!(
        cut >= LIMITS.header_read_timeout && cut <= LIMITS.header_read_timeout + step,
        "{cut:?}"
    );
    assert!(!read_all(&mut c).await.contains("200 OK"));
}

/// An idle keep-alive connection is closed by the same timeout.
#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = Harness::start(LIMITS);
    let mut c = h.connect(4096).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: nodewave\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let response = read_all(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert_eq!(started.elapsed(), LIMITS.header_read_timeout);
}

/// With one slot, a second client waits (unanswered) until the first one's
/// connection is cut, then is served.
#[tokio::test(start_paused = true)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let h = Harness::start(LIMITS);
    let started = Instant::now();
    let _silent = h.connect(4096).await;
    let mut second = h.connect(4096).await;
    second.write_all(HEALTHZ).await.unwrap();
    let mut first_byte = [0u8; 1];
    assert!(
        tokio::time::timeout(
            LIMITS.header_read_timeout / 2,
            second.read_exact(&mut first_byte)
        )
        .await
        .is_err(),
        "served while the only slot was taken"
    );
    tokio::time::timeout(Duration::from_hours(1), second.read_exact(&mut first_byte))
        .await
        .expect("never served")
        .unwrap();
    assert_eq!(started.elapsed(), LIMITS.header_read_timeout);
    let rest = read_all(&mut second).await;
    assert!(rest.starts_with("TTP/1.1 200 OK"), "{rest}");
}

/// A client that stops reading its response (here: a large /metrics answer
/// into a 256-byte socket buffer) is cut after the request timeout and frees
/// its slot.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_cut() {
    let h = Harness::start(LIMITS);
    let started = Instant::now();
    let mut stalled = h.connect(256).await;
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: nodewave\r\n\r\n")
        .await
        .unwrap();
    let mut next = h.connect(4096).await;
    next.write_all(HEALTHZ).await.unwrap();
    let response = read_all(&mut next).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert_eq!(started.elapsed(), LIMITS.request_timeout);
    // What the stalled client gets is a truncated response, then EOF.
    let partial = read_all(&mut stalled).await;
    assert!(partial.starts_with("HTTP/1.1 200 OK"), "{partial}");
    assert!(!partial.contains("# EOF"), "the whole response was written");
}

/// Shutdown stops accepting and closes idle connections at once.
#[tokio::test(start_paused = true)]
async fn shutdown_closes_idle_connections_without_waiting() {
    let mut h = Harness::start(Limits {
        max_connections: 4,
        ..LIMITS
    });
    let mut idle = h.connect(4096).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: nodewave\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    let started = Instant::now();
    h.stop.take().unwrap().send(()).unwrap();
    h.server.await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let _ = read_all(&mut idle).await;
}
