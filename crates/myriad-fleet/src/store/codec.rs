//! Stored values: one format-version byte, then postcard.
//!
//! The stored shapes are private structs, separate from the API types, so
//! the JSON API can change (renames, `skip_serializing_if`) without
//! changing the file. Postcard writes fields in order without names:
//! changing a stored shape means a new version byte and a decoder for the
//! old one. Keys are the ids' UTF-8 bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::presence::PresenceRecord;
use crate::registry::{AppClient, AppId, Device, DeviceId};

/// The version byte every stored value (but shadows) starts with.
pub(super) const V1: u8 = 1;

/// Why a stored key or value does not decode.
pub(super) type Malformed = String;

#[derive(Serialize)]
struct DeviceOut<'a> {
    name: &'a str,
    attributes: &'a BTreeMap<String, String>,
    groups: &'a BTreeSet<String>,
    enabled: bool,
    created_at: u64,
    updated_at: u64,
}

#[derive(Deserialize)]
struct DeviceIn {
    name: String,
    attributes: BTreeMap<String, String>,
    groups: BTreeSet<String>,
    enabled: bool,
    created_at: u64,
    updated_at: u64,
}

#[derive(Serialize, Deserialize)]
struct AppV1 {
    name: String,
    publish: Vec<String>,
    subscribe: Vec<String>,
    admin: bool,
    created_at: u64,
}

#[derive(Serialize, Deserialize)]
struct PresenceV1 {
    online: bool,
    version: u64,
    connection: u64,
    last_connected_at: Option<u64>,
    last_disconnected_at: Option<u64>,
    last_seen: u64,
    /// The reason's stable name, so adding reasons never renumbers.
    reason: Option<String>,
    address: Option<SocketAddr>,
    protocol: u8,
    keep_alive_secs: u16,
}

/// A value as stored: the version byte, then postcard.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Malformed> {
    postcard::to_extend(value, vec![V1]).map_err(|e| format!("cannot encode record: {e}"))
}

/// A stored value back (see [`encode`]).
pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Malformed> {
    let (&version, body) = bytes.split_first().ok_or("empty value")?;
    if version != V1 {
        return Err(format!("unknown record version {version}"));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| format!("undecodable record: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

/// The value stored for a device (its id is the key).
pub(super) fn encode_device(
    name: &str,
    attributes: &BTreeMap<String, String>,
    groups: &BTreeSet<String>,
    enabled: bool,
    created_at: u64,
    updated_at: u64,
) -> Result<Vec<u8>, Malformed> {
    encode(&DeviceOut {
        name,
        attributes,
        groups,
        enabled,
        created_at,
        updated_at,
    })
}

/// Shorthand for [`encode_device`] of a whole device.
pub(super) fn encode_device_record(d: &Device) -> Result<Vec<u8>, Malformed> {
    encode_device(
        &d.name,
        &d.attributes,
        &d.groups,
        d.enabled,
        d.created_at,
        d.updated_at,
    )
}

/// A device id from a stored key.
pub(super) fn device_id(key: &[u8]) -> Result<DeviceId, Malformed> {
    let s = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    DeviceId::new(s).map_err(|e| format!("key is not a device id: {e}"))
}

/// A device from its key and value. The stored fields are validated again,
/// so a record that breaks the limits reads as corrupt.
pub(super) fn decode_device(key: &[u8], value: &[u8]) -> Result<Device, Malformed> {
    let id = device_id(key)?;
    let v: DeviceIn = decode(value)?;
    let device = Device {
        id,
        name: v.name,
        attributes: v.attributes,
        groups: v.groups,
        enabled: v.enabled,
        created_at: v.created_at,
        updated_at: v.updated_at,
    };
    device
        .validate()
        .map_err(|e| format!("invalid device: {e}"))?;
    Ok(device)
}

/// The value stored for an app client.
pub(super) fn encode_app(app: &AppClient) -> Result<Vec<u8>, Malformed> {
    encode(&AppV1 {
        name: app.name.clone(),
        publish: app.publish.clone(),
        subscribe: app.subscribe.clone(),
        admin: app.admin,
        created_at: app.created_at,
    })
}

/// An app client from its key and value.
pub(super) fn decode_app(key: &[u8], value: &[u8]) -> Result<AppClient, Malformed> {
    let s = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let id = AppId::new(s).map_err(|e| format!("key is not an app id: {e}"))?;
    let v: AppV1 = decode(value)?;
    let app = AppClient {
        id,
        name: v.name,
        publish: v.publish,
        subscribe: v.subscribe,
        admin: v.admin,
        created_at: v.created_at,
    };
    app.validate()
        .map_err(|e| format!("invalid app client: {e}"))?;
    Ok(app)
}

/// The value stored for a credential: the version byte, then the PHC
/// string.
pub(super) fn encode_credential(phc: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(phc.len() + 1);
    out.push(V1);
    out.extend_from_slice(phc.as_bytes());
    out
}

/// A PHC string from its stored value.
pub(super) fn decode_credential(value: &[u8]) -> Result<String, Malformed> {
    match value.split_first() {
        Some((&V1, phc)) => std::str::from_utf8(phc)
            .map(str::to_string)
            .map_err(|_| "password hash is not UTF-8".to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty value".into()),
    }
}

/// The value stored for a presence record (its device is the key).
pub(super) fn encode_presence(r: &PresenceRecord) -> Result<Vec<u8>, Malformed> {
    encode(&PresenceV1 {
        online: r.online,
        version: r.version,
        connection: r.connection,
        last_connected_at: r.last_connected_at,
        last_disconnected_at: r.last_disconnected_at,
        last_seen: r.last_seen,
        reason: r.disconnect_reason.map(|r| r.as_str().to_string()),
        address: r.address,
        protocol: r.protocol,
        keep_alive_secs: r.keep_alive_secs,
    })
}

/// A presence record from its key and value.
pub(super) fn decode_presence(key: &[u8], value: &[u8]) -> Result<PresenceRecord, Malformed> {
    let device = device_id(key)?;
    let v: PresenceV1 = decode(value)?;
    let disconnect_reason = v
        .reason
        .map(|r| r.parse())
        .transpose()
        .map_err(|e| format!("{e}"))?;
    Ok(PresenceRecord {
        device,
        online: v.online,
        version: v.version,
        connection: v.connection,
        last_connected_at: v.last_connected_at,
        last_disconnected_at: v.last_disconnected_at,
        last_seen: v.last_seen,
        disconnect_reason,
        address: v.address,
        protocol: v.protocol,
        keep_alive_secs: v.keep_alive_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::DisconnectReason;
    use crate::registry::NewDevice;

    #[test]
    fn device_round_trip() {
        let mut new = NewDevice::new(DeviceId::new("d1").unwrap());
        new.name = "Pump".into();
        new.attributes.insert("site".into(), "x".into());
        new.groups.insert("g".into());
        let device = new.into_device(3).unwrap();
        let bytes = encode_device_record(&device).unwrap();
        assert_eq!(bytes[0], V1);
        assert_eq!(decode_device(b"d1", &bytes).unwrap(), device);
    }

    #[test]
    fn corrupt_values_say_why() {
        let device = NewDevice::new(DeviceId::new("d1").unwrap())
            .into_device(3)
            .unwrap();
        let bytes = encode_device_record(&device).unwrap();
        assert_eq!(decode_device(b"d1", &[]).unwrap_err(), "empty value");
        assert_eq!(
            decode_device(b"d1", &[9, 0]).unwrap_err(),
            "unknown record version 9"
        );
        assert!(
            decode_device(b"d1", &bytes[..bytes.len() - 1])
                .unwrap_err()
                .starts_with("undecodable record")
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode_device(b"d1", &longer).unwrap_err(),
            "1 trailing bytes"
        );
        assert!(
            decode_device(b"a/b", &bytes)
                .unwrap_err()
                .contains("not a device id")
        );
    }

    #[test]
    fn presence_round_trip() {
        let record = PresenceRecord {
            device: DeviceId::new("d1").unwrap(),
            online: false,
            version: 7,
            connection: 9,
            last_connected_at: Some(1),
            last_disconnected_at: Some(2),
            last_seen: 2,
            disconnect_reason: Some(DisconnectReason::SlowConsumer),
            address: Some("[2001:db8::1]:1883".parse().unwrap()),
            protocol: 4,
            keep_alive_secs: 30,
        };
        let bytes = encode_presence(&record).unwrap();
        assert_eq!(decode_presence(b"d1", &bytes).unwrap(), record);
    }

    #[test]
    fn credential_round_trip() {
        let bytes = encode_credential("$argon2id$x");
        assert_eq!(decode_credential(&bytes).unwrap(), "$argon2id$x");
        assert!(decode_credential(&[1, 0xff]).is_err());
    }
}
