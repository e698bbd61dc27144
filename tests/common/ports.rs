//! Ports for the servers that tests and benchmarks start as children.
//!
//! A port is picked here and bound later by the child, so something else
//! may take it in between. Asking the OS for one (`bind(…:0)`) hands out a
//! port from the ephemeral range, the same range the kernel uses for the
//! local end of every outgoing connection. Every test's latchkey keeps
//! connections open to the API server, so such a port can be taken by one
//! of them before the child binds it (CI saw `Address already in use` on
//! 127.0.0.1:37035 that way). So the ports come from a window outside
//! `ip_local_port_range`: 20000–29999, below Linux's default 32768–60999
//! and the NodePort range 30000–32767, or 61000–65534 when the ephemeral
//! range overlaps that. There only processes that bind a port by number
//! take one, a bind check skips those, and a counter in this process never
//! hands the same port out twice. `e2e/lib.sh`'s `free_port` (the control
//! plane's ports) takes its own window, 10000–19999, so the two never
//! race. When the ephemeral range overlaps both windows the OS picks, as
//! before (tests/ports.rs fails then, to say so).
//!
//! std only: the benches include this file with `#[path]`.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The windows, in the order tried (the first the ephemeral range does not
/// overlap is used); `[start, end)`.
const WINDOWS: [(u16, u16); 2] = [(20000, 30000), (61000, 65535)];

/// A TCP port on 127.0.0.1 that nothing had bound when this returned, from
/// outside the ephemeral range (see the module doc).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Some((start, end)) = window() else {
        return os_port();
    };
    let len = u32::from(end - start);
    // Two processes (a test binary and the bench it follows) start apart.
    let seed = std::process::id() % len;
    for _ in 0..len {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = start + ((seed + n) % len) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 in {start}..{end}");
}

/// The first of [`WINDOWS`] that the kernel's ephemeral range leaves alone.
pub fn window() -> Option<(u16, u16)> {
    static WINDOW: OnceLock<Option<(u16, u16)>> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        let (low, high) = ephemeral_range();
        WINDOWS
            .into_iter()
            .find(|&(start, end)| end <= low || start > high)
    })
}

/// `net.ipv4.ip_local_port_range`, or Linux's default when unreadable.
pub fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|n| n.parse().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32768, 60999),
    }
}

/// A port the OS picks (from the ephemeral range).
fn os_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
