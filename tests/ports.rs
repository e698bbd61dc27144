//! The tests' port picker (tests/common/ports.rs) on this machine: distinct
//! ports, free when handed out, outside the kernel's ephemeral range.
//! A binary of its own, std only, so that it runs once and links fast.

#[path = "common/ports.rs"]
mod ports;

#[test]
fn ports_are_distinct_free_and_outside_the_ephemeral_range() {
    let (low, high) = ports::ephemeral_range();
    assert!(
        ports::window().is_some(),
        "the ephemeral range {low}-{high} covers every window the tests take ports from"
    );
    let picked: Vec<u16> = (0..50).map(|_| ports::free_port()).collect();
    let distinct: std::collections::HashSet<_> = picked.iter().collect();
    assert_eq!(
        distinct.len(),
        picked.len(),
        "a port was handed out twice: {picked:?}"
    );
    for port in picked {
        assert!(
            !(low..=high).contains(&port),
            "{port} is in the ephemeral range {low}-{high}"
        );
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("a picked port is free");
    }
}
