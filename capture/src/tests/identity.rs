//! Schema 1.2 (identity): round trips, and old/new writers and readers in both directions.

use crate::identity::*;
use crate::record::*;
use crate::testutil::{max_identity, sample_record};
use crate::Error;

fn with_identity(seq: u32) -> CrashRecord {
    let mut r = sample_record(seq);
    r.ident = Identity {
        smbios_status: SmbiosStatus::Found,
        smbios: Some(Smbios {
            version: (3, 1),
            uuid: [
                0x4c, 0x4c, 0x45, 0x44, 0x00, 0x4a, 0x10, 0x38, 0x80, 0x4b, 0xb4, 0xc0, 0x4f, 0x4e,
                0x4c, 0x31,
            ],
            manufacturer: truncate_to("Microsoft Corporation"),
            product: truncate_to("Virtual Machine"),
            serial: truncate_to("0000-0002-5283-8426-7717-6447-86"),
        }),
        kvp_status: KvpStatus::Received,
        kvp: Kvp {
            vm_name: truncate_to("canary-07"),
            vm_id: truncate_to("2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C"),
            host_name: truncate_to("HV-HOST-12"),
            host_fqdn: truncate_to("hv-host-12.lab.example.net"),
        },
    };
    r
}

fn encode_vec(r: &CrashRecord) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    r.encode(&mut buf).unwrap().to_vec()
}

/// What a 1.1 writer sent: the 1.0 body and Ext1 only.
fn encode_1_1(r: &CrashRecord) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let a = postcard::to_slice(r, &mut buf).unwrap().len();
    let b = postcard::to_slice(&r.ext, &mut buf[a..]).unwrap().len();
    buf[..a + b].to_vec()
}

#[test]
fn schema_1_2_round_trips_the_smbios_and_kvp_identity() {
    let r = with_identity(9);
    let bytes = encode_vec(&r);
    let got = CrashRecord::decode(SCHEMA_MAJOR, 2, &bytes).unwrap();
    assert_eq!(got, r);
    assert_eq!(got.ident.kvp.host_name.as_str(), "HV-HOST-12");
    assert_eq!(
        got.ident.smbios.as_ref().unwrap().product.as_str(),
        "Virtual Machine"
    );
    // A typical record with identity still fits one chunk.
    assert!(bytes.len() < 1332, "{} bytes", bytes.len());
}

#[test]
fn a_1_1_record_decodes_with_an_unread_identity() {
    let r = with_identity(3);
    let old = encode_1_1(&r);
    let got = CrashRecord::decode(SCHEMA_MAJOR, 1, &old).unwrap();
    assert_eq!(got.ident, Identity::default());
    assert_eq!(got.ident.smbios_status, SmbiosStatus::NotRead);
    assert_eq!(got.ident.kvp_status, KvpStatus::NotRead);
    let mut want = r.clone();
    want.ident = Identity::empty();
    assert_eq!(got, want);
    // A 1.1 body claiming 1.2 lacks the group: a decode error, not a silent default.
    assert_eq!(
        CrashRecord::decode(SCHEMA_MAJOR, 2, &old),
        Err(Error::Decode { major: 1, minor: 2 })
    );
}

#[test]
fn a_1_1_reader_sees_a_1_2_record_as_its_1_1_prefix() {
    // A 1.1 reader decodes the 1.0 body and Ext1 and ignores what a newer minor appends; the
    // 1.2 encoding starts with exactly the 1.1 encoding of the same record.
    let r = with_identity(5);
    let new = encode_vec(&r);
    let old = encode_1_1(&r);
    assert!(new.len() > old.len());
    assert_eq!(&new[..old.len()], &old[..]);
    // What the 1.1 decoder did with these bytes (its code, with the 1.2 group unknown):
    let (base, rest): (CrashRecord, &[u8]) = postcard::take_from_bytes(&new).unwrap();
    let (ext, rest): (Ext1, &[u8]) = postcard::take_from_bytes(rest).unwrap();
    assert_eq!(base.message, r.message);
    assert_eq!(ext, r.ext);
    assert_eq!(rest.len(), new.len() - old.len());
    // Claiming 1.1 at this reader is trailing bytes (the writer's minor says what follows).
    assert!(matches!(
        CrashRecord::decode(SCHEMA_MAJOR, 1, &new),
        Err(Error::TrailingBytes(n)) if n == new.len() - old.len()
    ));
}

#[test]
fn the_maximal_identity_fits_its_bound_and_strings_truncate_at_char_boundaries() {
    let mut buf = [0u8; 1024];
    let id = max_identity();
    let n = postcard::to_slice(&id, &mut buf).unwrap().len();
    assert_eq!(n, 436);
    // 63 ASCII bytes then a 3-byte char do not fit 64: the char is dropped whole.
    let name = format!("{}€", "x".repeat(KVP_NAME_CAP - 1));
    let t: heapless::String<KVP_NAME_CAP> = truncate_to(&name);
    assert_eq!(t.len(), KVP_NAME_CAP - 1);
}

#[test]
fn status_codes_are_open_and_uuids_print_in_rfc_4122_order() {
    for v in 0..=255u8 {
        assert_eq!(u8::from(SmbiosStatus::from(v)), v);
        assert_eq!(u8::from(KvpStatus::from(v)), v);
    }
    assert_eq!(SmbiosStatus::from(1), SmbiosStatus::Found);
    assert_eq!(SmbiosStatus::from(9), SmbiosStatus::Other(9));
    assert_eq!(KvpStatus::from(3), KvpStatus::Silent);
    let u = [
        0x4c, 0x4c, 0x45, 0x44, 0x00, 0x4a, 0x10, 0x38, 0x80, 0x4b, 0xb4, 0xc0, 0x4f, 0x4e, 0x4c,
        0x31,
    ];
    assert_eq!(
        std::format!("{}", UuidText(&u)),
        "4c4c4544-004a-1038-804b-b4c04f4e4c31"
    );
}
