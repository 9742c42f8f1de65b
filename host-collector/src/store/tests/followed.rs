//! What `put_followup` reports on every backend: the record it attached the follow-up to
//! (its id and source, for the `crash_path` event), found by the whole key.

use super::*;

/// The follow-up frame of record `key` reporting its first `done` steps after the seal (the
/// rest pending).
fn reporting(key: &RecordKey, done: usize) -> Vec<u8> {
    use capture::panic::Outcome;
    let steps = after_seal(|i, _| {
        if i < done {
            (Outcome::Done, 10)
        } else {
            (Outcome::Pending, 0)
        }
    });
    followup_frame(key, &steps)
}

/// Two records of one boot id and seq that differ in their CRC, from two ports of a host
/// (the newer stored last): each follow-up is attached to the record whose CRC it carries
/// and reported with that record's id and source, stored first or replacing a less complete
/// one, also after a restart; a duplicate and one without a record report none.
#[test]
fn put_followup_reports_the_record_it_attached_the_followup_to() {
    for b in backends("followed_record") {
        let at = b.name;
        let mut s = b.open();
        let mut stored = Vec::new();
        for (later, source) in [(0, "10.0.0.8:4000"), (1, "10.0.0.8:4002")] {
            let mut r = capture::testutil::sample_record(6);
            r.boot_id = [8; 16];
            r.uptime_us += later;
            let n = sealed(&mut r, source, 1 + later as i64);
            s.commit_batch(std::slice::from_ref(&n), &[], &[], &[])
                .unwrap();
            stored.push((n.key, followed(&n, s.last_stored_ids()[0])));
        }
        let ((older, of_older), (newer, of_newer)) = (stored[0].clone(), stored[1].clone());
        assert_eq!((older.boot_id, older.seq), (newer.boot_id, newer.seq));
        assert_ne!(older.record_crc, newer.record_crc);
        // Each as `show` reads it by its id: the id and source reported are that row's.
        for (key, record) in &stored {
            let v = s.get(&RecordRef::Id(record.id), false).unwrap().unwrap();
            assert_eq!(v.record_crc, format!("{:08x}", key.record_crc), "{at}");
            assert_eq!(v.source, record.source, "{at}");
        }
        assert_eq!(
            s.put_followup(&older, &reporting(&older, 4), 10).unwrap(),
            FollowupOutcome::Stored {
                record: of_older.clone()
            },
            "{at}: the older record's follow-up"
        );
        assert_eq!(
            s.put_followup(&newer, &reporting(&newer, 4), 11).unwrap(),
            FollowupOutcome::Stored {
                record: of_newer.clone()
            },
            "{at}: the newer record's follow-up"
        );
        assert_eq!(
            s.put_followup(&older, &reporting(&older, 5), 12).unwrap(),
            FollowupOutcome::Replaced {
                record: of_older.clone(),
                reported_before: 4
            },
            "{at}: the older record's more complete follow-up"
        );
        assert_eq!(
            s.put_followup(&older, &reporting(&older, 5), 13).unwrap(),
            FollowupOutcome::Duplicate,
            "{at}"
        );
        let mut unknown = older;
        unknown.record_crc = !older.record_crc;
        assert_ne!(unknown.record_crc, newer.record_crc);
        assert_eq!(
            s.put_followup(&unknown, &reporting(&unknown, 4), 14)
                .unwrap(),
            FollowupOutcome::NoSuchRecord,
            "{at}: a third CRC"
        );
        drop(s);
        // After a restart: found in the database the same way.
        let mut s = b.open();
        assert_eq!(
            s.put_followup(&newer, &reporting(&newer, 5), 15).unwrap(),
            FollowupOutcome::Replaced {
                record: of_newer,
                reported_before: 4
            },
            "{at}: the newer record's more complete follow-up, after a restart"
        );
    }
}
