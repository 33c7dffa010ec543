//! Device certificates and certificate authorities.
//!
//! | table | key | value |
//! |---|---|---|
//! | `device_certificates` | fingerprint (32 bytes) | version byte + postcard [`DeviceCertificate`] less its fingerprint |
//! | `device_certificates_by_device` | device id, `0x00`, fingerprint | empty |
//! | `certificate_authorities` | fingerprint (32 bytes) | version byte + postcard [`CertificateAuthority`] less its fingerprint |
//!
//! A revoked device certificate keeps its record (so a CA-issued one stays
//! refused) until it has expired: registering another certificate for the
//! device drops the device's revoked records past their end of validity.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::codec::{decode, device_id, encode};
use super::error::FileName;
use super::tables::{CAS, CERTS_BY_DEVICE, DEVICE_CERTS, DEVICES, RawTable, Tables, read_table};
use super::{FleetStore, FleetStoreError, has_key};
use crate::certs::{
    CertificateAuthority, CertificateStatus, DeviceCertificate, Fingerprint,
    MAX_CERTIFICATE_AUTHORITIES, MAX_CERTIFICATES_PER_DEVICE,
};
use crate::registry::DeviceId;

const DEVICE_CERTS_NAME: &str = "device_certificates";
const CAS_NAME: &str = "certificate_authorities";

#[derive(Serialize, Deserialize)]
struct DeviceCertV1 {
    device: String,
    status: CertificateStatus,
    subject: String,
    issuer: String,
    serial: String,
    not_before: i64,
    not_after: i64,
    created_at: u64,
    revoked_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct CaV1 {
    subject: String,
    not_before: i64,
    not_after: i64,
    created_at: u64,
    der: Vec<u8>,
    crl: Option<Vec<u8>>,
    crl_revoked: u64,
    crl_updated_at: Option<u64>,
}

fn encode_cert(cert: &DeviceCertificate) -> Result<Vec<u8>, FleetStoreError> {
    encode(&DeviceCertV1 {
        device: cert.device.to_string(),
        status: cert.status,
        subject: cert.subject.clone(),
        issuer: cert.issuer.clone(),
        serial: cert.serial.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
        created_at: cert.created_at,
        revoked_at: cert.revoked_at,
    })
    .map_err(FleetStoreError::Encode)
}

fn fingerprint_key(key: &[u8]) -> Result<Fingerprint, String> {
    <[u8; 32]>::try_from(key)
        .map(Fingerprint)
        .map_err(|_| format!("key of {} bytes is not a fingerprint", key.len()))
}

fn decode_cert(key: &[u8], value: &[u8]) -> Result<DeviceCertificate, String> {
    let v: DeviceCertV1 = decode(value)?;
    Ok(DeviceCertificate {
        fingerprint: fingerprint_key(key)?,
        device: device_id(v.device.as_bytes())?,
        status: v.status,
        subject: v.subject,
        issuer: v.issuer,
        serial: v.serial,
        not_before: v.not_before,
        not_after: v.not_after,
        created_at: v.created_at,
        revoked_at: v.revoked_at,
    })
}

fn encode_ca(ca: &CertificateAuthority) -> Result<Vec<u8>, FleetStoreError> {
    encode(&CaV1 {
        subject: ca.subject.clone(),
        not_before: ca.not_before,
        not_after: ca.not_after,
        created_at: ca.created_at,
        der: ca.der.clone(),
        crl: ca.crl.clone(),
        crl_revoked: ca.crl_revoked,
        crl_updated_at: ca.crl_updated_at,
    })
    .map_err(FleetStoreError::Encode)
}

fn decode_ca(key: &[u8], value: &[u8]) -> Result<CertificateAuthority, String> {
    let v: CaV1 = decode(value)?;
    Ok(CertificateAuthority {
        fingerprint: fingerprint_key(key)?,
        subject: v.subject,
        not_before: v.not_before,
        not_after: v.not_after,
        created_at: v.created_at,
        der: v.der,
        crl: v.crl,
        crl_revoked: v.crl_revoked,
        crl_updated_at: v.crl_updated_at,
    })
}

fn by_device_key(device: &str, fingerprint: &Fingerprint) -> Vec<u8> {
    let mut key = Vec::with_capacity(device.len() + 33);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(&fingerprint.0);
    key
}

fn get_cert_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    fingerprint: &Fingerprint,
) -> Result<Option<DeviceCertificate>, FleetStoreError> {
    let key = fingerprint.0.as_slice();
    let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
        return Ok(None);
    };
    decode_cert(key, guard.value())
        .map(Some)
        .map_err(|why| file.corrupt(DEVICE_CERTS_NAME, key, why))
}

fn get_ca_in(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    fingerprint: &Fingerprint,
) -> Result<Option<CertificateAuthority>, FleetStoreError> {
    let key = fingerprint.0.as_slice();
    let Some(guard) = table.get(key).map_err(|e| file.engine(e))? else {
        return Ok(None);
    };
    decode_ca(key, guard.value())
        .map(Some)
        .map_err(|why| file.corrupt(CAS_NAME, key, why))
}

/// The fingerprints of `device`'s certificates, from the index.
fn device_fingerprints(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    file: &FileName,
    device: &str,
) -> Result<Vec<Fingerprint>, FleetStoreError> {
    let mut start = device.as_bytes().to_vec();
    start.push(0);
    let mut end = device.as_bytes().to_vec();
    end.push(1);
    let mut found = Vec::new();
    for row in table
        .range(start.as_slice()..end.as_slice())
        .map_err(|e| file.engine(e))?
    {
        let (key, _) = row.map_err(|e| file.engine(e))?;
        let key = key.value();
        let tail = &key[start.len().min(key.len())..];
        let fingerprint = fingerprint_key(tail)
            .map_err(|why| file.corrupt("device_certificates_by_device", key, why))?;
        found.push(fingerprint);
    }
    Ok(found)
}

fn remove_cert(
    tables: &mut Tables<'_>,
    file: &FileName,
    device: &str,
    fingerprint: &Fingerprint,
) -> Result<(), FleetStoreError> {
    tables
        .device_certs
        .remove(fingerprint.0.as_slice())
        .map_err(|e| file.engine(e))?;
    tables
        .certs_by_device
        .remove(by_device_key(device, fingerprint).as_slice())
        .map_err(|e| file.engine(e))?;
    Ok(())
}

/// Removes every certificate of `device` (it is being deleted).
pub(super) fn remove_device_certificates(
    tables: &mut Tables<'_>,
    file: &FileName,
    device: &DeviceId,
) -> Result<(), FleetStoreError> {
    for fingerprint in device_fingerprints(&tables.certs_by_device, file, device.as_str())? {
        remove_cert(tables, file, device.as_str(), &fingerprint)?;
    }
    Ok(())
}

fn put_ca(
    table: &mut RawTable<'_>,
    file: &FileName,
    ca: &CertificateAuthority,
) -> Result<(), FleetStoreError> {
    let value = encode_ca(ca)?;
    table
        .insert(ca.fingerprint.0.as_slice(), value.as_slice())
        .map_err(|e| file.engine(e))?;
    Ok(())
}

impl FleetStore {
    /// Registers `cert` for its device. Drops the device's revoked
    /// certificates that expired before `now_secs` first. Fails with
    /// [`FleetStoreError::DeviceNotFound`], or
    /// [`FleetStoreError::CertificateConflict`] when the fingerprint is
    /// registered already (to this or another device, active or revoked) or
    /// the device has [`MAX_CERTIFICATES_PER_DEVICE`].
    pub fn add_device_certificate(
        &self,
        cert: &DeviceCertificate,
        now_secs: i64,
    ) -> Result<(), FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let device = cert.device.as_str();
            if !has_key(&tables.devices, device.as_bytes(), file)? {
                return Err(FleetStoreError::DeviceNotFound(cert.device.clone()));
            }
            if let Some(existing) = get_cert_in(&tables.device_certs, file, &cert.fingerprint)? {
                let state = match existing.status {
                    CertificateStatus::Active => "registered",
                    CertificateStatus::Revoked => "revoked",
                };
                return Err(FleetStoreError::CertificateConflict(format!(
                    "certificate {} is already {state} for device {}",
                    cert.fingerprint, existing.device
                )));
            }
            let mut kept = 0;
            for fingerprint in device_fingerprints(&tables.certs_by_device, file, device)? {
                match get_cert_in(&tables.device_certs, file, &fingerprint)? {
                    Some(old)
                        if old.status == CertificateStatus::Revoked && old.not_after < now_secs =>
                    {
                        remove_cert(tables, file, device, &fingerprint)?;
                    }
                    _ => kept += 1,
                }
            }
            if kept >= MAX_CERTIFICATES_PER_DEVICE {
                return Err(FleetStoreError::CertificateConflict(format!(
                    "device {device} has {kept} certificates (at most {MAX_CERTIFICATES_PER_DEVICE}, revoked ones counted until they expire)"
                )));
            }
            let value = encode_cert(cert)?;
            tables
                .device_certs
                .insert(cert.fingerprint.0.as_slice(), value.as_slice())
                .map_err(|e| file.engine(e))?;
            tables
                .certs_by_device
                .insert(by_device_key(device, &cert.fingerprint).as_slice(), [].as_slice())
                .map_err(|e| file.engine(e))?;
            Ok(())
        })
    }

    /// The device certificate with `fingerprint`, if registered.
    pub fn device_certificate(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<DeviceCertificate>, FleetStoreError> {
        self.read(|txn| {
            get_cert_in(
                &read_table(txn, DEVICE_CERTS, &self.file)?,
                &self.file,
                fingerprint,
            )
        })
    }

    /// Every certificate registered for `device` (at most
    /// [`MAX_CERTIFICATES_PER_DEVICE`]), in fingerprint order. Fails with
    /// [`FleetStoreError::DeviceNotFound`].
    pub fn device_certificates(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<DeviceCertificate>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            if !has_key(
                &read_table(txn, DEVICES, file)?,
                device.as_str().as_bytes(),
                file,
            )? {
                return Err(FleetStoreError::DeviceNotFound(device.clone()));
            }
            let index = read_table(txn, CERTS_BY_DEVICE, file)?;
            let certs = read_table(txn, DEVICE_CERTS, file)?;
            let mut found = Vec::new();
            for fingerprint in device_fingerprints(&index, file, device.as_str())? {
                if let Some(cert) = get_cert_in(&certs, file, &fingerprint)? {
                    found.push(cert);
                }
            }
            Ok(found)
        })
    }

    /// Marks `device`'s certificate `fingerprint` revoked at `now_ms` (a
    /// revoked one stays as it is); returns it. Fails with
    /// [`FleetStoreError::CertificateNotFound`] if the device has no such certificate.
    pub fn revoke_device_certificate(
        &self,
        device: &DeviceId,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<DeviceCertificate, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let mut cert = get_cert_in(&tables.device_certs, file, fingerprint)?
                .filter(|cert| cert.device == *device)
                .ok_or_else(|| {
                    FleetStoreError::CertificateNotFound(format!(
                        "device {device} has no certificate {fingerprint}"
                    ))
                })?;
            if cert.status == CertificateStatus::Active {
                cert.status = CertificateStatus::Revoked;
                cert.revoked_at = Some(now_ms);
                let value = encode_cert(&cert)?;
                tables
                    .device_certs
                    .insert(fingerprint.0.as_slice(), value.as_slice())
                    .map_err(|e| file.engine(e))?;
            }
            Ok(cert)
        })
    }

    /// Registers `ca`. Fails with [`FleetStoreError::CertificateConflict`]
    /// if it is registered already or there are [`MAX_CERTIFICATE_AUTHORITIES`].
    pub fn add_certificate_authority(
        &self,
        ca: &CertificateAuthority,
    ) -> Result<(), FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            if has_key(&tables.cas, ca.fingerprint.0.as_slice(), file)? {
                return Err(FleetStoreError::CertificateConflict(format!(
                    "CA {} is already registered",
                    ca.fingerprint
                )));
            }
            let count = tables.cas.len().map_err(|e| file.engine(e))?;
            if count >= MAX_CERTIFICATE_AUTHORITIES as u64 {
                return Err(FleetStoreError::CertificateConflict(format!(
                    "{count} CAs are registered (at most {MAX_CERTIFICATE_AUTHORITIES})"
                )));
            }
            put_ca(&mut tables.cas, file, ca)
        })
    }

    /// Every registered CA (at most [`MAX_CERTIFICATE_AUTHORITIES`]), in fingerprint order.
    pub fn certificate_authorities(&self) -> Result<Vec<CertificateAuthority>, FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, CAS, file)?;
            let mut cas = Vec::new();
            for row in table.iter().map_err(|e| file.engine(e))? {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                let ca = decode_ca(key.value(), value.value())
                    .map_err(|why| file.corrupt(CAS_NAME, key.value(), why))?;
                cas.push(ca);
            }
            Ok(cas)
        })
    }

    /// Every registered CA that decodes, and an error for each one that
    /// does not (the listeners' trust is built from the readable ones, so a
    /// damaged record cannot stop start-up).
    pub fn readable_certificate_authorities(
        &self,
    ) -> Result<(Vec<CertificateAuthority>, Vec<FleetStoreError>), FleetStoreError> {
        let file = &self.file;
        self.read(|txn| {
            let table = read_table(txn, CAS, file)?;
            let mut cas = Vec::new();
            let mut damaged = Vec::new();
            for row in table.iter().map_err(|e| file.engine(e))? {
                let (key, value) = row.map_err(|e| file.engine(e))?;
                match decode_ca(key.value(), value.value()) {
                    Ok(ca) => cas.push(ca),
                    Err(why) => damaged.push(file.corrupt(CAS_NAME, key.value(), why)),
                }
            }
            Ok((cas, damaged))
        })
    }

    /// The registered CA `fingerprint`, if any.
    pub fn certificate_authority(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<Option<CertificateAuthority>, FleetStoreError> {
        self.read(|txn| get_ca_in(&read_table(txn, CAS, &self.file)?, &self.file, fingerprint))
    }

    /// Replaces CA `fingerprint`'s revocation list (`None` removes it);
    /// returns the CA. Fails with [`FleetStoreError::CertificateNotFound`].
    pub fn set_certificate_authority_crl(
        &self,
        fingerprint: &Fingerprint,
        crl: Option<(Vec<u8>, u64)>,
        now_ms: u64,
    ) -> Result<CertificateAuthority, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let mut ca = get_ca_in(&tables.cas, file, fingerprint)?
                .ok_or_else(|| ca_not_found(fingerprint))?;
            let (der, revoked) = match crl {
                Some((der, revoked)) => (Some(der), revoked),
                None => (None, 0),
            };
            ca.crl = der;
            ca.crl_revoked = revoked;
            ca.crl_updated_at = Some(now_ms);
            put_ca(&mut tables.cas, file, &ca)?;
            Ok(ca)
        })
    }

    /// Removes CA `fingerprint`; returns it. Fails with
    /// [`FleetStoreError::CertificateNotFound`].
    pub fn delete_certificate_authority(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<CertificateAuthority, FleetStoreError> {
        let file = &self.file;
        self.write(|tables| {
            let ca = get_ca_in(&tables.cas, file, fingerprint)?
                .ok_or_else(|| ca_not_found(fingerprint))?;
            tables
                .cas
                .remove(fingerprint.0.as_slice())
                .map_err(|e| file.engine(e))?;
            Ok(ca)
        })
    }
}

fn ca_not_found(fingerprint: &Fingerprint) -> FleetStoreError {
    FleetStoreError::CertificateNotFound(format!("no CA {fingerprint} is registered"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NewDevice;

    fn store() -> (tempfile::TempDir, FleetStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FleetStore::open(dir.path()).expect("open");
        (dir, store)
    }

    fn cert(device: &str, byte: u8, not_after: i64) -> DeviceCertificate {
        DeviceCertificate {
            fingerprint: Fingerprint([byte; 32]),
            device: DeviceId::new(device).expect("id"),
            status: CertificateStatus::Active,
            subject: format!("CN={device}"),
            issuer: "CN=ca".into(),
            serial: "01".into(),
            not_before: 0,
            not_after,
            created_at: 1,
            revoked_at: None,
        }
    }

    fn add_device(store: &FleetStore, id: &str) {
        let new = NewDevice::new(DeviceId::new(id).expect("id"));
        store.create_device(&new, 1).expect("create");
    }

    #[test]
    fn certificates_round_trip_revoke_and_go_with_their_device() {
        let (_dir, store) = store();
        let d = DeviceId::new("dev-1").expect("id");
        assert!(matches!(
            store.add_device_certificate(&cert("dev-1", 1, 100), 0),
            Err(FleetStoreError::DeviceNotFound(_))
        ));
        add_device(&store, "dev-1");
        add_device(&store, "dev-2");
        store
            .add_device_certificate(&cert("dev-1", 1, 100), 0)
            .expect("add");
        assert!(matches!(
            store.add_device_certificate(&cert("dev-2", 1, 100), 0),
            Err(FleetStoreError::CertificateConflict(_))
        ));
        assert_eq!(
            store.device_certificates(&d).expect("list"),
            vec![cert("dev-1", 1, 100)]
        );
        let other = DeviceId::new("dev-2").expect("id");
        assert!(matches!(
            store.revoke_device_certificate(&other, &Fingerprint([1; 32]), 5),
            Err(FleetStoreError::CertificateNotFound(_))
        ));
        let revoked = store
            .revoke_device_certificate(&d, &Fingerprint([1; 32]), 5)
            .expect("revoke");
        assert_eq!(revoked.status, CertificateStatus::Revoked);
        assert_eq!(revoked.revoked_at, Some(5));
        let stored = store
            .device_certificate(&Fingerprint([1; 32]))
            .expect("get");
        assert_eq!(stored, Some(revoked));
        store.delete_device(&d).expect("delete");
        assert_eq!(
            store
                .device_certificate(&Fingerprint([1; 32]))
                .expect("get"),
            None
        );
    }

    #[test]
    fn a_device_has_a_bounded_number_of_certificates_and_expired_revoked_ones_make_room() {
        let (_dir, store) = store();
        add_device(&store, "dev-1");
        let d = DeviceId::new("dev-1").expect("id");
        for byte in 0..MAX_CERTIFICATES_PER_DEVICE as u8 {
            store
                .add_device_certificate(&cert("dev-1", byte, 100), 0)
                .expect("add");
        }
        let one_more = cert("dev-1", 200, 100);
        assert!(matches!(
            store.add_device_certificate(&one_more, 0),
            Err(FleetStoreError::CertificateConflict(_))
        ));
        store
            .revoke_device_certificate(&d, &Fingerprint([0; 32]), 1)
            .expect("revoke");
        // Revoked but not expired yet: still counted.
        assert!(store.add_device_certificate(&one_more, 50).is_err());
        // Past its end of validity the revoked one is dropped.
        store.add_device_certificate(&one_more, 101).expect("room");
        assert_eq!(
            store
                .device_certificate(&Fingerprint([0; 32]))
                .expect("get"),
            None
        );
    }

    #[test]
    fn at_most_the_limit_of_cas_are_registered() {
        let (_dir, store) = store();
        let ca = |byte: u8| CertificateAuthority {
            fingerprint: Fingerprint([byte; 32]),
            subject: format!("CN=ca{byte}"),
            not_before: 0,
            not_after: 10,
            created_at: 1,
            der: vec![byte],
            crl: None,
            crl_revoked: 0,
            crl_updated_at: None,
        };
        for byte in 0..MAX_CERTIFICATE_AUTHORITIES as u8 {
            store
                .add_certificate_authority(&ca(byte))
                .expect("within the limit");
        }
        let one_more = ca(MAX_CERTIFICATE_AUTHORITIES as u8);
        assert!(matches!(
            store.add_certificate_authority(&one_more),
            Err(FleetStoreError::CertificateConflict(_))
        ));
        store
            .delete_certificate_authority(&Fingerprint([0; 32]))
            .expect("delete");
        store
            .add_certificate_authority(&one_more)
            .expect("room again");
        assert_eq!(
            store.certificate_authorities().expect("list").len(),
            MAX_CERTIFICATE_AUTHORITIES
        );
    }

    #[test]
    fn a_damaged_ca_record_is_reported_and_the_others_stay_readable() {
        let (_dir, store) = store();
        let good = CertificateAuthority {
            fingerprint: Fingerprint([1; 32]),
            subject: "CN=good".into(),
            not_before: 0,
            not_after: 10,
            created_at: 1,
            der: vec![1],
            crl: None,
            crl_revoked: 0,
            crl_updated_at: None,
        };
        store.add_certificate_authority(&good).expect("add");
        store
            .write(|tables| {
                tables
                    .cas
                    .insert([2u8; 32].as_slice(), [1u8, 0xff, 0xff].as_slice())
                    .map_err(|e| store.file.engine(e))?;
                Ok(())
            })
            .expect("write a damaged record");
        assert!(matches!(
            store.certificate_authorities(),
            Err(FleetStoreError::Corrupt { .. })
        ));
        let (cas, damaged) = store.readable_certificate_authorities().expect("read");
        assert_eq!(cas, vec![good]);
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0].to_string().contains("certificate_authorities"),
            "{}",
            damaged[0]
        );
    }

    #[test]
    fn cas_round_trip_with_their_crl() {
        let (_dir, store) = store();
        let ca = CertificateAuthority {
            fingerprint: Fingerprint([7; 32]),
            subject: "CN=ca".into(),
            not_before: 0,
            not_after: 10,
            created_at: 1,
            der: vec![1, 2, 3],
            crl: None,
            crl_revoked: 0,
            crl_updated_at: None,
        };
        store.add_certificate_authority(&ca).expect("add");
        assert!(store.add_certificate_authority(&ca).is_err());
        let with_crl = store
            .set_certificate_authority_crl(&ca.fingerprint, Some((vec![9], 2)), 3)
            .expect("crl");
        assert_eq!(with_crl.crl, Some(vec![9]));
        assert_eq!(
            store.certificate_authorities().expect("list"),
            vec![with_crl.clone()]
        );
        assert_eq!(
            store
                .delete_certificate_authority(&ca.fingerprint)
                .expect("delete"),
            with_crl
        );
        assert!(store.certificate_authorities().expect("list").is_empty());
    }
}
