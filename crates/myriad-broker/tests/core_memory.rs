//! What the sans-IO core keeps per idle connection, counted by a global
//! allocator: the bytes still allocated after 20,000 clients connected
//! (session, connection, client id, and each client's share of the tables
//! and keep alive buckets), divided by the number of clients.
//!
//! This file is its own test binary with a single test, so nothing else
//! allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use myriad_broker::{Broker, BrokerConfig};
use myriad_mqtt::{Connect, PacketProperties, ProtocolVersion};

/// Bytes requested and not yet freed, across the process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only
// the requested sizes are added up.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` holds for `System` too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLIENTS: u64 = 20_000;

#[test]
fn an_idle_connection_costs_the_core_few_bytes() {
    let start = Instant::now();
    let mut broker = Broker::new(BrokerConfig::default());
    // Connect and drain one client first: the broker's own buffers are not per client.
    let connect = |conn: u64| Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: format!("client-{conn:06}").into(),
        will: None,
        username: None,
        password: None,
        properties: PacketProperties::new(),
    };
    assert!(broker.handle_connect(start, 0, connect(0)));
    while broker.poll_output().is_some() {}
    let before = LIVE.load(Ordering::Relaxed);
    for conn in 1..=CLIENTS {
        let packet = connect(conn);
        assert!(broker.handle_connect(start, conn, packet));
        while broker.poll_output().is_some() {}
    }
    let per_connection = (LIVE.load(Ordering::Relaxed) - before) / CLIENTS as isize;
    assert_eq!(broker.connection_count(), CLIENTS as usize + 1);
    println!("core bytes per idle connection: {per_connection}");
    // Session 96 + connection 64 + client id 13, and a share of the slab,
    // both indexes and the keep alive bucket: 215 when written. The hash
    // maps and keep alive B-tree they replaced came to 772 here.
    assert!(
        per_connection <= 256,
        "an idle connection costs the core {per_connection} bytes"
    );
    drop(broker);
}
