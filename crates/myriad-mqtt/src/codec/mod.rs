//! Encoding and decoding of whole packets.
//!
//! The work is split into small modules: `read` and `write` hold the
//! primitive field readers and writers, `properties` the 5.0 property
//! block, `decode` and `encode` the per-packet logic.

mod decode;
mod encode;
mod properties;
mod read;
mod write;

use bytes::{Buf, BytesMut};

use crate::{
    DecodeError, EncodeError, MAX_VARIABLE_INT, Packet, PacketProperties, ProtocolVersion, Publish,
};
use read::{Reader, parse_variable_int};
use write::{Counter, Sink};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing is
/// consumed); otherwise consumes exactly one packet. `version` is the version
/// of the connection (ignored for CONNECT, which carries its own).
/// `max_packet_size` bounds the whole packet (fixed header included); a larger
/// one is refused as soon as its fixed header is read.
///
/// Bad fixed-header flags are reported as soon as the first byte is there.
/// After an error the connection must be closed: what is left in `buf` is
/// unspecified (a packet whose body was invalid has been consumed).
///
/// The payload of a PUBLISH, and strings and binary fields, are zero-copy
/// slices of `buf`'s storage.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = decode::check_first_byte(first, version)?;
    let Some((remaining, len_bytes)) = parse_variable_int(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + len_bytes;
    let total = header_len.saturating_add(remaining as usize);
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut bytes = buf.split_to(total).freeze();
    bytes.advance(header_len);
    decode::packet(packet_type, first, Reader::new(bytes), version).map(Some)
}

/// Appends the encoding of `packet` for `version` to `buf`.
///
/// CONNECT is encoded in the version it names (`Connect::protocol`). On
/// 3.1.1, properties and 5.0-only reason codes are not written (CONNACK and
/// SUBACK codes are mapped to the nearest 3.1.1 return code); AUTH fails with
/// [`EncodeError::UnsupportedInVersion`]. On error nothing is written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, version)?;
    buf.reserve(1 + variable_int_len(remaining) + remaining as usize);
    Sink::put_u8(buf, encode::first_byte(packet));
    buf.put_variable_int(remaining, "remaining length")?;
    encode::body(packet, version, buf)
}

/// Appends the fixed and variable header of `publish` for `version` to
/// `buf`: everything [`encode`] writes except the payload, which the caller
/// sends after it as it is (vectored I/O: one payload shared by every
/// subscriber, never copied per connection). On error nothing is written.
pub fn encode_publish_header(
    publish: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    encode::write_publish_header(publish, version, &mut counter)?;
    let remaining = u32::try_from(counter.0.saturating_add(publish.payload.len()))
        .ok()
        .filter(|len| *len <= MAX_VARIABLE_INT)
        .ok_or(EncodeError::PacketTooLarge)?;
    let before = buf.len();
    buf.reserve(1 + variable_int_len(remaining) + counter.0);
    Sink::put_u8(buf, encode::first_byte_of_publish(publish));
    let written = buf
        .put_variable_int(remaining, "remaining length")
        .and_then(|()| encode::write_publish_header(publish, version, buf));
    if written.is_err() {
        buf.truncate(before);
    }
    written
}

/// Bytes the 5.0 encoding of `properties` takes (its length prefix
/// included), 0 when there are none: what a message's properties weigh
/// in a queue.
pub fn properties_len(properties: &PacketProperties) -> usize {
    if properties.get().is_none() {
        return 0;
    }
    let mut counter = Counter::default();
    match properties::write_properties(properties, &mut counter) {
        Ok(()) => counter.0,
        // Unencodable properties are never sent; weigh them by their count.
        Err(_) => counter.0.max(1),
    }
}

/// The size in bytes of the whole encoded packet (fixed header included).
///
/// Fails exactly when [`encode`] would.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = remaining_len(packet, version)?;
    Ok(1 + variable_int_len(remaining) + remaining as usize)
}

/// Validates `packet` and measures its remaining length.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Result<u32, EncodeError> {
    let mut counter = Counter::default();
    encode::body(packet, version, &mut counter)?;
    u32::try_from(counter.0)
        .ok()
        .filter(|len| *len <= MAX_VARIABLE_INT)
        .ok_or(EncodeError::PacketTooLarge)
}

/// How many bytes the Variable Byte Integer encoding of `value` takes.
pub fn variable_int_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;
    use crate::QoS;

    /// Header then payload is byte for byte what `encode` writes, in both versions.
    #[test]
    fn publish_header_and_payload_make_the_whole_packet() {
        let mut properties = PacketProperties::new();
        properties.content_type = Some("text/plain".into());
        for (qos, props) in [
            (QoS::AtMostOnce, PacketProperties::new()),
            (QoS::AtLeastOnce, properties),
        ] {
            let publish = Publish {
                dup: false,
                qos,
                retain: true,
                topic: "a/b".into(),
                packet_id: 9,
                payload: bytes::Bytes::from(vec![7u8; 300]),
                properties: props,
            };
            for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
                let mut whole = BytesMut::new();
                encode(&Packet::Publish(publish.clone()), version, &mut whole).expect("encode");
                let mut split = BytesMut::new();
                encode_publish_header(&publish, version, &mut split).expect("header");
                split.extend_from_slice(&publish.payload);
                assert_eq!(whole, split);
            }
        }
    }
}
