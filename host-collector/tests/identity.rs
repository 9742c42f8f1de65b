//! Who crashed (issue 13): records carrying the SMBIOS and KVP identity (schema 1.2) go
//! through `serve` over UDP; `list --host` filters on the KVP names, `list` shows them,
//! `show` and `show --json` print the identity; a 1.1 record (no identity) still stores and
//! shows, saying it has none.

mod common;

use capture::identity::{Identity, Kvp, KvpStatus, Smbios, SmbiosStatus};
use capture::record::truncate_to;
use capture::sender::SendState;
use common::*;

fn ident(vm: &str, host: &str, fqdn: &str) -> Identity {
    Identity {
        smbios_status: SmbiosStatus::Found,
        smbios: Some(Smbios {
            version: (3, 1),
            uuid: [
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
                0x77, 0x88,
            ],
            manufacturer: truncate_to("Microsoft Corporation"),
            product: truncate_to("Virtual Machine"),
            serial: truncate_to(&format!("serial-of-{vm}")),
        }),
        kvp_status: KvpStatus::Received,
        kvp: Kvp {
            vm_name: truncate_to(vm),
            vm_id: truncate_to("2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C"),
            host_name: truncate_to(host),
            host_fqdn: truncate_to(fqdn),
        },
    }
}

fn boot(n: u8) -> [u8; 16] {
    [n; 16]
}

fn bytes_with(boot_id: [u8; 16], seq: u32, id: Option<Identity>) -> (Vec<u8>, (u16, u16)) {
    let mut r = capture::testutil::sample_record(seq);
    r.boot_id = boot_id;
    r.seq = seq;
    let mut buf = vec![0u8; capture::record::MAX_ENCODED_LEN];
    match id {
        Some(i) => {
            r.ident = i;
            (r.encode(&mut buf).unwrap().to_vec(), (1, 2))
        }
        None => {
            // A 1.1 writer: the 1.0 body and Ext1 only, i.e. without the 7 bytes an empty
            // identity group encodes to (two statuses, an Option tag, four empty strings).
            let all = r.encode(&mut buf).unwrap().to_vec();
            let old = all[..all.len() - 7].to_vec();
            capture::record::CrashRecord::decode(1, 1, &old).expect("a 1.1 body");
            (old, (1, 1))
        }
    }
}

#[test]
fn list_host_filters_on_the_kvp_names_and_show_prints_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    flow(&dir.path().join("c.db"));
}

/// The same on PostgreSQL (`$CANARY_TEST_PG`; skipped without it unless
/// `CANARY_REQUIRE_PG=1`, see `store::pg::testing`).
#[test]
fn list_host_filters_on_the_kvp_names_on_postgresql() {
    let Some(pg) = host_collector::store::pg::testing::TestDb::create("identity_list_host") else {
        return;
    };
    flow(std::path::Path::new(&pg.url));
}

fn flow(db: &std::path::Path) {
    let db = db.to_path_buf();
    let srv = Server::start(&db, "127.0.0.1:0", &[], &[]);
    let recs = [
        (
            boot(1),
            1,
            Some(ident("web-01", "HV07", "HV07.corp.example")),
        ),
        (
            boot(2),
            2,
            Some(ident("web-02", "HV07", "HV07.corp.example")),
        ),
        (
            boot(3),
            3,
            Some(ident("db-01", "HV12", "hv12.corp.example")),
        ),
        (boot(4), 4, None),
    ];
    for (b, seq, id) in recs.clone() {
        let (bytes, schema) = bytes_with(b, seq, id);
        let st = send_record(srv.addr, b, seq, &bytes, None, Some(schema));
        assert_eq!(st, SendState::Acked);
    }
    wait_stats(&db, |s| s["records_stored"].as_u64() == Some(4));

    let ids = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["list", "--json"];
        a.extend_from_slice(args);
        let o = run_db(&db, &a);
        // No match: an empty list, exit status 1 ("No crash records found").
        assert!(
            o.status.success() || (o.status.code() == Some(1) && stdout(&o).trim() == "[]"),
            "{a:?}: {:?} {} {}",
            o.status,
            stderr(&o),
            stdout(&o)
        );
        json(&o)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&[]), vec![1, 2, 3, 4]);
    // By host (the FQDN's prefix, any case), by exact host, by VM name.
    assert_eq!(ids(&["--host", "hv07"]), vec![1, 2]);
    assert_eq!(ids(&["--host", "HV12.corp.example"]), vec![3]);
    assert_eq!(ids(&["--host", "web-02"]), vec![2]);
    assert_eq!(ids(&["--host", "nowhere"]), Vec::<u64>::new());

    // list: the VM@HOST column (narrow), VM and HOST (wide); only rows that have names.
    let o = run_db(&db, &["list", "--utc"]);
    let t = stdout(&o);
    assert!(t.lines().next().unwrap().contains("VM@HOST"), "{t}");
    assert!(t.contains(" web-01@HV07 "), "{t}");
    assert!(t.contains(" db-01@hv12 "), "{t}");
    assert!(t.lines().all(|l| l.chars().count() <= 80), "{t}");
    let o = run_db(&db, &["list", "--wide", "--host", "hv12"]);
    let t = stdout(&o);
    let head: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert!(head.windows(2).any(|w| w == ["VM", "HOST"]), "{t}");
    assert!(
        t.contains("db-01") && t.contains("hv12.corp.example"),
        "{t}"
    );
    assert!(!t.contains("web-0"), "{t}");
    // show --json: the identity object.
    let o = run_db(&db, &["show", "--json", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["vm_name"], "web-02");
    assert_eq!(v["host_name"], "HV07.corp.example");
    let id = &v["identity"];
    assert_eq!(id["kvp"]["status"], "received");
    assert_eq!(id["kvp"]["vm_name"], "web-02");
    assert_eq!(id["kvp"]["host_name"], "HV07");
    assert_eq!(id["kvp"]["host_fqdn"], "HV07.corp.example");
    assert_eq!(id["kvp"]["vm_id"], "2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C");
    assert_eq!(id["smbios"]["status"], "found");
    assert_eq!(id["smbios"]["uuid"], "12345678-9abc-def0-1122-334455667788");
    assert_eq!(id["smbios"]["serial"], "serial-of-web-02");
    assert_eq!(id["smbios"]["version"], "3.1");
    // show (text).
    let o = run_db(&db, &["show", "2"]);
    let text = stdout(&o);
    assert!(
        text.contains("System: Microsoft Corporation Virtual Machine, serial serial-of-web-02, uuid 12345678-9abc-def0-1122-334455667788 (SMBIOS 3.1)"),
        "{text}"
    );
    assert!(
        text.contains("VM: web-02 (id 2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C)"),
        "{text}"
    );
    assert!(text.contains("Host: HV07.corp.example (HV07)"), "{text}");
    // The 1.1 record: stored and shown, with no identity.
    let o = run_db(&db, &["show", "--json", "4"]);
    let v = json(&o);
    assert!(v.get("identity").is_none(), "{v:#}");
    assert!(v.get("vm_name").is_none());
    let text = stdout(&run_db(&db, &["show", "4"]));
    assert!(
        text.contains("Identity: (not in this record: schema before 1.2)"),
        "{text}"
    );
    let _ = srv.stop("TERM");
}
