//! Retention by bytes (`max_bytes`) on every backend: it deletes about the excess, oldest
//! first, and nothing more (issue 14: one retention policy, no data lost).

use super::*;

/// `n` real records of about the same size (boot 9, sequence `first..`, received in that
/// order), stored in batches of 50.
fn store_similar(s: &mut Store, first: u32, n: u32) -> Vec<RecordKey> {
    let recs: Vec<NewRecord> = (first..first + n)
        .map(|seq| real(9, seq, i64::from(seq)).0)
        .collect();
    for batch in recs.chunks(50) {
        s.commit_batch(batch, &[], &[], &[]).unwrap();
    }
    recs.iter().map(|r| r.key).collect()
}

/// With `max_bytes` at half of what 400 similar records use, about half of them go (the
/// oldest), what stays is within the limit, and applying it again right away deletes
/// nothing more. A measure that does not shrink when records are deleted (PostgreSQL's
/// table size before schema 4) deleted nearly all of them.
#[test]
fn retention_by_bytes_deletes_about_the_excess_oldest_first() {
    for b in backends("retention_bytes") {
        let at = b.name;
        let mut s = b.open();
        let keys = store_similar(&mut s, 0, 400);
        let used = s.used_bytes().unwrap();
        let max = used / 2;
        let r = Retention {
            max_bytes: Some(max),
            ..Retention::default()
        };
        let gone = s.apply_retention(&r, 0).unwrap();
        let kept = s.count().unwrap();
        assert_eq!(gone + kept, 400, "{at}");
        assert!(
            (120..=280).contains(&kept),
            "{at}: kept {kept} of 400 records (deleted {gone}) with max_bytes {max}, half of \
             the {used} bytes they used"
        );
        let after = s.used_bytes().unwrap();
        assert!(
            after <= max,
            "{at}: {after} bytes used after retention, max {max}"
        );
        // Oldest first: the first `gone` are deleted, the rest kept.
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                s.contains(k).unwrap(),
                i as u64 >= gone,
                "{at}: record {i} (deleted {gone})"
            );
        }
        assert_eq!(s.apply_retention(&r, 0).unwrap(), 0, "{at}: applied again");
        assert_eq!(s.count().unwrap(), kept, "{at}");
        assert_eq!(
            s.stats().unwrap().counters["retention_deleted"],
            gone,
            "{at}"
        );
    }
}

/// A store whose size measure does not move when records are deleted.
struct Unmoved {
    /// The records' sizes, oldest first.
    sizes: std::collections::VecDeque<u64>,
    /// What the measure says, whatever is deleted.
    measure: u64,
}

impl Shrink for Unmoved {
    fn used_bytes(&self) -> Result<u64> {
        Ok(self.measure)
    }
    fn count(&self) -> Result<u64> {
        Ok(self.sizes.len() as u64)
    }
    fn delete_oldest(&mut self, k: u64) -> Result<u64> {
        let k = (k as usize).min(self.sizes.len());
        self.sizes.drain(..k);
        Ok(k as u64)
    }
}

/// A measure that a delete does not move: retention by size deletes what the first
/// estimate says (the excess at the bytes per record) and stops, instead of deleting again
/// and again for the same excess (nearly every record).
#[test]
fn retention_by_bytes_stops_when_the_measure_does_not_move() {
    let mut s = Unmoved {
        sizes: std::iter::repeat_n(1000, 400).collect(),
        measure: 400_000,
    };
    assert_eq!(shrink_to(&mut s, 200_000).unwrap(), 200);
    assert_eq!(s.sizes.len(), 200);
}

/// The same on a real server with the measure PostgreSQL's retention used before schema 4:
/// the size of `records` on disk (with its indexes), which a delete does not shrink.
#[test]
fn retention_by_bytes_stops_when_the_table_size_does_not_shrink() {
    let Some(b) = pg_backend("retention_table_size") else {
        return;
    };
    struct TableSize<'a>(&'a mut Store, &'a pg::testing::TestDb);
    impl Shrink for TableSize<'_> {
        fn used_bytes(&self) -> Result<u64> {
            let q = "SELECT pg_total_relation_size('records')";
            Ok(self.1.query_i64(q).unwrap() as u64)
        }
        fn count(&self) -> Result<u64> {
            self.0.count()
        }
        fn delete_oldest(&mut self, k: u64) -> Result<u64> {
            Shrink::delete_oldest(self.0, k)
        }
    }
    let mut s = b.open();
    let keys = store_similar(&mut s, 0, 400);
    let t = b.pg.as_ref().unwrap();
    let mut m = TableSize(&mut s, t);
    let used = m.used_bytes().unwrap();
    let gone = shrink_to(&mut m, used / 2).unwrap();
    assert_eq!(m.used_bytes().unwrap(), used, "the measure did not move");
    assert!(
        (150..=250).contains(&gone),
        "deleted {gone} of 400 records for half of {used} bytes"
    );
    assert!(s.contains(&keys[gone as usize]).unwrap());
    assert_eq!(s.count().unwrap(), 400 - gone);
}
