//! Decodes arbitrary bytes as a stream of packets in both protocol versions.
//!
//! Decoding must never panic, and every packet that decodes must encode
//! (with `encoded_len` agreeing) and decode again to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use myriad_mqtt::{ProtocolVersion, decode, encode, encoded_len};

fn decode_stream(data: &[u8], version: ProtocolVersion) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 20) {
        let mut again = BytesMut::new();
        encode(&packet, version, &mut again).expect("a decoded packet encodes");
        assert_eq!(encoded_len(&packet, version), Ok(again.len()));
        let decoded = decode(&mut again, version, usize::MAX).expect("re-encoding decodes");
        assert_eq!(decoded, Some(packet));
        assert!(again.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    decode_stream(data, ProtocolVersion::V311);
    decode_stream(data, ProtocolVersion::V5);
});
