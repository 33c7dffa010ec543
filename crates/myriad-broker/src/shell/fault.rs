//! Test builds only (feature `fault-injection`): a way to make the core
//! task panic, so tests can see the process end non-zero, promptly.
//!
//! With `MYRIAD_FAULT_CORE_PANIC_TOPIC` set in the environment, a PUBLISH
//! on exactly that topic makes the core task panic. Release builds
//! (`cargo build --release`) leave the feature, and so this, out; `cargo
//! test` turns it on for the binary the tests run.

use std::sync::OnceLock;

use myriad_mqtt::Packet;

use super::Event;

/// Environment variable naming the topic that makes the core panic.
pub const CORE_PANIC_TOPIC: &str = "MYRIAD_FAULT_CORE_PANIC_TOPIC";

/// Panics if `event` publishes on the configured topic.
pub(super) fn inspect(event: &Event) {
    static TOPIC: OnceLock<Option<String>> = OnceLock::new();
    let Some(topic) = TOPIC.get_or_init(|| std::env::var(CORE_PANIC_TOPIC).ok()) else {
        return;
    };
    if let Event::Packet {
        packet: Packet::Publish(publish),
        ..
    } = event
        && *publish.topic == **topic
    {
        panic!("fault injection: a PUBLISH on {topic} (test builds only)");
    }
}
