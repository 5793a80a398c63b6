//! Ports for test nodes, chosen where the kernel never hands one out on its own.
//!
//! A node binds its ports itself, so the harness must let go of a reserved port before the node
//! starts. A port from `bind(0)` lies in the kernel's ephemeral range, which is also where every
//! outgoing connection (a test's HTTP client, a node dialing a peer) and every other `bind(0)` gets
//! its port: in the moment between release and the node's bind, any of them can take it, and the
//! node fails with "Address already in use" (seen in CI). Below the ephemeral range only a caller
//! asking for that port by number can take it, and every caller in our tests asks through here,
//! each process starting from its own place in the range.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// Lowest port handed out: above the well-known and registered ports servers usually take.
const PORT_FLOOR: u16 = 10_000;

/// The smallest span below the ephemeral range worth using; with less, fall back to `bind(0)`.
const PORT_SPAN_MIN: u16 = 1_000;

/// Where a process starts in the span: pids far apart start far apart.
const PROCESS_STRIDE: u32 = 211;

/// How far this process has walked through the span.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1, bound (so nothing else is given it) until the listener is dropped.
pub fn reserve_port() -> anyhow::Result<(SocketAddr, TcpListener)> {
    let Some((floor, span)) = quiet_span() else {
        let listener = TcpListener::bind("127.0.0.1:0").context("reserving a port")?;
        return Ok((listener.local_addr().context("reserved port")?, listener));
    };
    let start = std::process::id().wrapping_mul(PROCESS_STRIDE) % u32::from(span);
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = floor + ((start + step) % u32::from(span)) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok((listener.local_addr().context("reserved port")?, listener));
        }
    }
    anyhow::bail!(
        "no free port in 127.0.0.1:{floor}..{}",
        u32::from(floor) + u32::from(span)
    )
}

/// A free port number on 127.0.0.1 for a process the caller starts itself (etcd in a test).
/// Released before it returns, but below the ephemeral range, so only another caller of this
/// module could take it in between.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(reserve_port()?.0.port())
}

/// `PORT_FLOOR` and the number of ports up to the kernel's ephemeral range, if that is enough.
fn quiet_span() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = range.split_whitespace().next()?.parse().ok()?;
    let span = low.checked_sub(PORT_FLOOR)?;
    (span >= PORT_SPAN_MIN).then_some((PORT_FLOOR, span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_below_the_ephemeral_range_and_distinct() {
        let held: Vec<_> = (0..64).map(|_| reserve_port().unwrap()).collect();
        let mut ports: Vec<u16> = held.iter().map(|(a, _)| a.port()).collect();
        if let Some((floor, span)) = quiet_span() {
            assert!(
                ports.iter().all(|p| (floor..floor + span).contains(p)),
                "{ports:?}"
            );
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 64, "a port was handed out twice");
    }
}
