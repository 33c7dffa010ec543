//! Encoding and decoding of whole packets. (Being written.)

use bytes::BytesMut;

use crate::{DecodeError, EncodeError, Packet, ProtocolVersion};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing is
/// consumed); otherwise consumes exactly one packet. `version` is the version
/// of the connection (ignored for CONNECT, which carries its own).
/// `max_packet_size` bounds the whole packet (fixed header included); a larger
/// one is refused as soon as its fixed header is read.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    todo!()
}

/// Appends the encoding of `packet` for `version` to `buf`.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, buf);
    todo!()
}

/// The size in bytes of the whole encoded packet (fixed header included).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let _ = (packet, version);
    todo!()
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
