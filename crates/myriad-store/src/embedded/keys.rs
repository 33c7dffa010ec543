//! Keys of the per-session tables: the client id, escaped so that the
//! encoding sorts as the client id does and ends unambiguously, then the
//! record's own part (filter bytes, or a big-endian seq or packet id).
//!
//! Escaping: each `0x00` in the client id is written `0x00 0xFF`, and the
//! client id ends with `0x00 0x00`. So all keys of one session share one
//! prefix, sit together in one contiguous range (`prefix .. prefix + 1`),
//! and sessions follow each other in client-id order, the order of the
//! `sessions` table: [`super::load`] walks each table once, in step with it.

/// The key prefix every record of `client_id` starts with.
pub(super) fn session_prefix(client_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 10);
    push_prefix(&mut key, client_id);
    key
}

fn push_prefix(key: &mut Vec<u8>, client_id: &[u8]) {
    for &byte in client_id {
        key.push(byte);
        if byte == 0 {
            key.push(0xFF);
        }
    }
    key.extend_from_slice(&[0, 0]);
}

/// The first key past every record of the session whose prefix is `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    // A prefix ends with 0x00 0x00; 0x00 0x01 sorts after every key that
    // extends it, and before the prefix of any later client id.
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    end
}

/// Key of a subscription.
pub(super) fn subscription(client_id: &[u8], filter: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + filter.len() + 2);
    push_prefix(&mut key, client_id);
    key.extend_from_slice(filter);
    key
}

/// Key of an outbound message: big-endian, so keys sort in seq order.
pub(super) fn outbound(client_id: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 10);
    push_prefix(&mut key, client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Key of an inbound QoS 2 packet id (big-endian).
pub(super) fn inbound_qos2(client_id: &[u8], packet_id: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 4);
    push_prefix(&mut key, client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_client_id_then_suffix() {
        let ids: [&[u8]; 6] = [b"", b"\x00", b"\x00\x01", b"a", b"a\x00", b"a\x01"];
        let mut keys = Vec::new();
        for id in ids {
            for seq in [0u64, 1, 255, 256, 65_536, u64::MAX] {
                keys.push(outbound(id, seq));
            }
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for id in ids {
            let prefix = session_prefix(id);
            let end = prefix_end(&prefix);
            let inside: Vec<_> = keys
                .iter()
                .filter(|k| k.as_slice() >= prefix.as_slice() && k.as_slice() < end.as_slice())
                .collect();
            assert_eq!(inside.len(), 6, "{id:?}");
            assert!(inside.iter().all(|k| k.starts_with(&prefix)));
        }
    }

    #[test]
    fn filters_follow_their_client_id() {
        // A filter starting with 0xFF bytes must not sort into the next client id.
        let a = subscription(b"a", b"\xff\xff");
        let b = subscription(b"a\x00", b"");
        assert!(a < b);
    }
}
