//! MQTT 5 properties as stored: a count, then one entry per set property
//! (or per item of a repeated one), each its MQTT property identifier and
//! its value. Every field of [`Properties`] round-trips, including those
//! that are not allowed in a PUBLISH (a will's delay interval, say).

use myriad_mqtt::{ByteString, Properties};

use super::wire::{Malformed, Reader, Writer};

// MQTT 5 property identifiers (section 2.2.2.2).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Collects the entries to write, so the count can go first.
struct Entries {
    out: Writer,
    count: u64,
}

impl Entries {
    fn bool(&mut self, id: u8, value: Option<bool>) {
        if let Some(value) = value {
            self.count += 1;
            self.out.u8(id);
            self.out.u8(u8::from(value));
        }
    }

    fn u8(&mut self, id: u8, value: Option<u8>) {
        if let Some(value) = value {
            self.count += 1;
            self.out.u8(id);
            self.out.u8(value);
        }
    }

    fn u16(&mut self, id: u8, value: Option<u16>) {
        if let Some(value) = value {
            self.count += 1;
            self.out.u8(id);
            self.out.u16(value);
        }
    }

    fn u32(&mut self, id: u8, value: Option<u32>) {
        if let Some(value) = value {
            self.count += 1;
            self.out.u8(id);
            self.out.u32(value);
        }
    }

    fn bytes(&mut self, id: u8, value: Option<&[u8]>) {
        if let Some(value) = value {
            self.count += 1;
            self.out.u8(id);
            self.out.bytes(value);
        }
    }
}

/// Appends `props` to `out`.
pub(super) fn write(out: &mut Writer, props: &Properties) {
    if props.is_empty() {
        out.varint(0);
        return;
    }
    let mut e = Entries {
        out: Writer::empty(64),
        count: 0,
    };
    let p = props;
    e.bool(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    e.u32(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    e.bytes(CONTENT_TYPE, p.content_type.as_deref().map(str::as_bytes));
    e.bytes(
        RESPONSE_TOPIC,
        p.response_topic.as_deref().map(str::as_bytes),
    );
    e.bytes(CORRELATION_DATA, p.correlation_data.as_deref());
    for &id in &p.subscription_identifiers {
        e.count += 1;
        e.out.u8(SUBSCRIPTION_IDENTIFIER);
        e.out.varint(u64::from(id));
    }
    e.u32(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    e.bytes(
        ASSIGNED_CLIENT_IDENTIFIER,
        p.assigned_client_identifier.as_deref().map(str::as_bytes),
    );
    e.u16(SERVER_KEEP_ALIVE, p.server_keep_alive);
    e.bytes(
        AUTHENTICATION_METHOD,
        p.authentication_method.as_deref().map(str::as_bytes),
    );
    e.bytes(AUTHENTICATION_DATA, p.authentication_data.as_deref());
    e.bool(REQUEST_PROBLEM_INFORMATION, p.request_problem_information);
    e.u32(WILL_DELAY_INTERVAL, p.will_delay_interval);
    e.bool(REQUEST_RESPONSE_INFORMATION, p.request_response_information);
    e.bytes(
        RESPONSE_INFORMATION,
        p.response_information.as_deref().map(str::as_bytes),
    );
    e.bytes(
        SERVER_REFERENCE,
        p.server_reference.as_deref().map(str::as_bytes),
    );
    e.bytes(REASON_STRING, p.reason_string.as_deref().map(str::as_bytes));
    e.u16(RECEIVE_MAXIMUM, p.receive_maximum);
    e.u16(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    e.u16(TOPIC_ALIAS, p.topic_alias);
    e.u8(MAXIMUM_QOS, p.maximum_qos);
    e.bool(RETAIN_AVAILABLE, p.retain_available);
    for (key, value) in &p.user_properties {
        e.count += 1;
        e.out.u8(USER_PROPERTY);
        e.out.bytes(key.as_bytes());
        e.out.bytes(value.as_bytes());
    }
    e.u32(MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    e.bool(
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    e.bool(
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    e.bool(
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    out.varint(e.count);
    out.append(e.out);
}

fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), Malformed> {
    if slot.is_some() {
        return Err(Malformed("property stored twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn bool(r: &mut Reader) -> Result<bool, Malformed> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Malformed("boolean property is neither 0 nor 1")),
    }
}

fn string(r: &mut Reader) -> Result<ByteString, Malformed> {
    r.string()
}

/// Reads properties written by [`write`].
pub(super) fn read(r: &mut Reader) -> Result<Properties, Malformed> {
    let count = r.varint()?;
    let mut p = Properties::default();
    for _ in 0..count {
        match r.u8()? {
            PAYLOAD_FORMAT_INDICATOR => set(&mut p.payload_format_indicator, bool(r)?)?,
            MESSAGE_EXPIRY_INTERVAL => set(&mut p.message_expiry_interval, r.u32()?)?,
            CONTENT_TYPE => set(&mut p.content_type, string(r)?)?,
            RESPONSE_TOPIC => set(&mut p.response_topic, string(r)?)?,
            CORRELATION_DATA => set(&mut p.correlation_data, r.bytes()?)?,
            SUBSCRIPTION_IDENTIFIER => p.subscription_identifiers.push(r.varint_u32()?),
            SESSION_EXPIRY_INTERVAL => set(&mut p.session_expiry_interval, r.u32()?)?,
            ASSIGNED_CLIENT_IDENTIFIER => set(&mut p.assigned_client_identifier, string(r)?)?,
            SERVER_KEEP_ALIVE => set(&mut p.server_keep_alive, r.u16()?)?,
            AUTHENTICATION_METHOD => set(&mut p.authentication_method, string(r)?)?,
            AUTHENTICATION_DATA => set(&mut p.authentication_data, r.bytes()?)?,
            REQUEST_PROBLEM_INFORMATION => set(&mut p.request_problem_information, bool(r)?)?,
            WILL_DELAY_INTERVAL => set(&mut p.will_delay_interval, r.u32()?)?,
            REQUEST_RESPONSE_INFORMATION => set(&mut p.request_response_information, bool(r)?)?,
            RESPONSE_INFORMATION => set(&mut p.response_information, string(r)?)?,
            SERVER_REFERENCE => set(&mut p.server_reference, string(r)?)?,
            REASON_STRING => set(&mut p.reason_string, string(r)?)?,
            RECEIVE_MAXIMUM => set(&mut p.receive_maximum, r.u16()?)?,
            TOPIC_ALIAS_MAXIMUM => set(&mut p.topic_alias_maximum, r.u16()?)?,
            TOPIC_ALIAS => set(&mut p.topic_alias, r.u16()?)?,
            MAXIMUM_QOS => set(&mut p.maximum_qos, r.u8()?)?,
            RETAIN_AVAILABLE => set(&mut p.retain_available, bool(r)?)?,
            USER_PROPERTY => {
                let key = string(r)?;
                let value = string(r)?;
                p.user_properties.push((key, value));
            }
            MAXIMUM_PACKET_SIZE => set(&mut p.maximum_packet_size, r.u32()?)?,
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                set(&mut p.wildcard_subscription_available, bool(r)?)?
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                set(&mut p.subscription_identifier_available, bool(r)?)?
            }
            SHARED_SUBSCRIPTION_AVAILABLE => set(&mut p.shared_subscription_available, bool(r)?)?,
            _ => return Err(Malformed("unknown property identifier")),
        }
    }
    Ok(p)
}
