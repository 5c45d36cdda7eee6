//! The bytes `bench build` moves to and from the registry: a TCP relay on 127.0.0.1 in front of
//! the lab registry that counts what goes through it each way. Both sides of the benchmark
//! reach the registry (their images and the base images) only through it, so what it counts
//! is what a runner would pull and push, HTTP headers included. Runs no process.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Bytes moved since the last [`Relay::take`]: `pushed` to the registry, `pulled` from it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub pulled: u64,
    pub pushed: u64,
}

impl Traffic {
    pub fn total(self) -> u64 {
        self.pulled + self.pushed
    }
}

/// A relay listening on `127.0.0.1:<port>`, forwarding every connection to the registry.
pub struct Relay {
    /// `127.0.0.1:<port>`: the registry address both sides use.
    pub address: String,
    pulled: Arc<AtomicU64>,
    pushed: Arc<AtomicU64>,
}

impl Relay {
    /// Starts relaying to `upstream` (`host:port`). The threads end with the process.
    pub fn start(upstream: &str) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1 for the byte counter")?;
        let address = format!("127.0.0.1:{}", listener.local_addr()?.port());
        let (pulled, pushed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (down, up) = (Arc::clone(&pulled), Arc::clone(&pushed));
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                // A relay must add no delay of its own: with Nagle's algorithm on its sockets, a
                // request written in two pieces (headers, then body) waits for the registry's
                // delayed ACK of the first, 40 ms, which a direct connection never does.
                let (Ok(()), Ok(())) = (client.set_nodelay(true), server.set_nodelay(true)) else { continue };
                let (down, up) = (Arc::clone(&down), Arc::clone(&up));
                std::thread::spawn(move || relay(client, server, &down, &up));
            }
        });
        Ok(Relay { address, pulled, pushed })
    }

    /// The bytes moved since the last call, and a new count from zero.
    pub fn take(&self) -> Traffic {
        Traffic { pulled: self.pulled.swap(0, Ordering::SeqCst), pushed: self.pushed.swap(0, Ordering::SeqCst) }
    }
}

/// Copies both ways between `client` and `server` until both are done, counting.
fn relay(client: TcpStream, server: TcpStream, pulled: &AtomicU64, pushed: &AtomicU64) {
    let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else { return };
    std::thread::scope(|scope| {
        scope.spawn(|| copy(client_reader, &server, pushed));
        copy(server_reader, &client, pulled);
    });
}

/// Copies `from` into `to` until `from` ends, adding every byte to `count`; then closes the
/// writing half of `to`, so the other side sees the end too.
fn copy(mut from: TcpStream, mut to: &TcpStream, count: &AtomicU64) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                // Counted before it is passed on: whoever sees the bytes arrive sees them counted.
                count.fetch_add(read as u64, Ordering::SeqCst);
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Bytes as megabytes, for the report.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_way_and_starts_again_from_zero() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream_address = upstream.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut connection in upstream.incoming().flatten() {
                let mut request = [0; 5];
                connection.read_exact(&mut request).unwrap();
                connection.write_all(b"a longer answer").unwrap();
            }
        });
        let relay = Relay::start(&upstream_address).unwrap();
        let mut client = TcpStream::connect(&relay.address).unwrap();
        client.write_all(b"hello").unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap_or_default();
        assert_eq!(answer, b"a longer answer");
        assert_eq!(relay.take(), Traffic { pulled: 15, pushed: 5 });
        assert_eq!(relay.take().total(), 0);
    }
}
