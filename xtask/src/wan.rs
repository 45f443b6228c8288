//! A simulated WAN link between two sites on one machine: a TCP proxy per primary-site node
//! that delays every byte by a fixed one-way latency in each direction (order kept, no
//! bandwidth limit). This machine has no qdisc support for netem, so latency is added in user
//! space; the standby site reaches the primary site only through these proxies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The proxies of one link; dropping it closes them and every connection through them.
pub struct WanLink {
    tasks: JoinSet<()>,
    /// `127.0.0.1:port` of each proxy, in the order of the targets.
    pub addresses: Vec<String>,
}

impl WanLink {
    /// One proxy per `host:port` target, each delaying by `one_way`.
    pub async fn start(targets: &[String], one_way: Duration) -> anyhow::Result<Self> {
        let mut tasks = JoinSet::new();
        let mut addresses = Vec::new();
        for target in targets {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addresses.push(listener.local_addr()?.to_string());
            let target = target.clone();
            tasks.spawn(async move {
                let mut conns = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let target = target.clone();
                    conns.spawn(async move {
                        if let Ok(server) = TcpStream::connect(&target).await {
                            relay(client, server, one_way).await;
                        }
                    });
                }
            });
        }
        Ok(WanLink { tasks, addresses })
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn relay(client: TcpStream, server: TcpStream, one_way: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either side closing ends both directions.
    tokio::select! {
        _ = delayed_copy(cr, sw, one_way) => {}
        _ = delayed_copy(sr, cw, one_way) => {}
    }
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
