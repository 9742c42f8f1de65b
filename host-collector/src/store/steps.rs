//! `stats --steps`: how long each panic-path step took, per host, from the `step_*_us`
//! columns. The step times measure the host (UNLOAD, the reconnect, the ship): p50 and p99
//! per host say which host is slow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The step columns, in step order, with the step names `show` uses.
pub const STEP_COLUMNS: [(&str, &str); 7] = [
    ("freeze", "step_freeze_us"),
    ("screen-flush", "step_screen_flush_us"),
    ("vmbus-unload", "step_vmbus_unload_us"),
    ("arch-cleanup", "step_arch_cleanup_us"),
    ("ship", "step_ship_us"),
    ("crash-registers", "step_crash_registers_us"),
    ("end", "step_end_us"),
];

/// One (host, step) row of `stats --steps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStat {
    pub host: String,
    pub step: String,
    /// Records with a time for this step.
    pub records: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
}

/// The host of a record: its source address without the port (`10.0.0.5:40000` ->
/// `10.0.0.5`, `[fe80::1]:7` -> `fe80::1`); other sources as they are.
pub fn host_of(source: &str) -> String {
    match source.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => source.to_string(),
    }
}

/// The nearest-rank percentile `q` (0 < q <= 1) of sorted `v` (not empty).
pub fn percentile(v: &[u32], q: f64) -> u32 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One record's host source and step times (the `step_*_us` columns, in step order).
pub(super) type StepRow = (String, [Option<i64>; 7]);

/// `stats --steps` from the rows of every record with a step time: per (host, step).
pub(super) fn aggregate(rows: Vec<StepRow>, host: Option<&str>) -> Vec<StepStat> {
    let mut by: BTreeMap<(String, usize), Vec<u32>> = BTreeMap::new();
    for (source, times) in rows {
        let h = host_of(&source);
        if host.is_some_and(|want| want != h) {
            continue;
        }
        for (i, t) in times.iter().enumerate() {
            if let Some(us) = t {
                by.entry((h.clone(), i))
                    .or_default()
                    .push((*us).clamp(0, u32::MAX as i64) as u32);
            }
        }
    }
    by.into_iter()
        .map(|((host, i), mut v)| {
            v.sort_unstable();
            StepStat {
                host,
                step: STEP_COLUMNS[i].0.into(),
                records: v.len() as u64,
                p50_us: percentile(&v, 0.50),
                p99_us: percentile(&v, 0.99),
                max_us: *v.last().unwrap_or(&0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRecord, Store, Sync, MIGRATIONS};

    #[test]
    fn hosts_drop_the_port_and_percentiles_are_nearest_rank() {
        assert_eq!(host_of("10.0.0.5:40000"), "10.0.0.5");
        assert_eq!(host_of("[fe80::1]:7"), "fe80::1");
        assert_eq!(host_of("screen:shot.png"), "screen:shot.png");
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[1, 2], 0.5), 1);
    }

    /// A version-5 database's rows get their step columns from their `steps` JSON when
    /// migration 6 runs (pending steps and unknown names stay NULL).
    #[test]
    fn migration_6_backfills_step_times_of_older_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..5] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 5).unwrap();
            c.execute(
                "INSERT INTO records (boot_id, seq, record_crc, received_at_us, source,
                    schema_major, schema_minor, build_id, arch, boot_mode, hypervisor,
                    uptime_us, kind, message, registers, backtrace, log_tail, steps, raw)
                 VALUES (zeroblob(16), 1, 2, 3, '10.1.1.1:5', 1, 0, 'b', 'x86_64', 'pvh', '{}',
                    4, 'panic', 'm', '{}', '[]', '',
                    '[{\"step\":\"freeze\",\"outcome\":\"done\",\"elapsed_us\":321},
                      {\"step\":\"vmbus-unload\",\"outcome\":\"timed out\",\"elapsed_us\":9000},
                      {\"step\":\"ship\",\"outcome\":\"pending\",\"elapsed_us\":0}]',
                    x'00')",
                [],
            )
            .unwrap();
        }
        let st = Store::open(&path, Sync::Normal).unwrap();
        let got: (Option<i64>, Option<i64>, Option<i64>, Option<String>) = st
            .connection()
            .query_row(
                "SELECT step_freeze_us, step_vmbus_unload_us, step_ship_us, image_id FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(got, (Some(321), Some(9000), None, None));
        let s = st.step_stats(None).unwrap();
        assert_eq!(
            s.iter()
                .map(|x| (x.host.as_str(), x.step.as_str(), x.p50_us))
                .collect::<Vec<_>>(),
            [
                ("10.1.1.1", "freeze", 321),
                ("10.1.1.1", "vmbus-unload", 9000)
            ]
        );
    }

    fn record(seq: u32, source: &str, unload_us: u32, ship: Option<u32>) -> NewRecord {
        use capture::panic::{Outcome, Step, StepRecord};
        let mut r = capture::testutil::sample_record(1);
        r.steps.clear();
        for (step, outcome, us) in [
            (Step::Freeze, Outcome::Done, 100 + seq),
            (Step::VmbusUnload, Outcome::Done, unload_us),
            (
                Step::Ship,
                if ship.is_some() {
                    Outcome::Done
                } else {
                    Outcome::Pending
                },
                ship.unwrap_or(0),
            ),
        ] {
            r.steps
                .push(StepRecord {
                    step,
                    outcome,
                    elapsed_us: us,
                })
                .unwrap();
        }
        let mut n = super::super::tests::sample(seq, 1);
        n.key.boot_id = [seq as u8; 16];
        n.text = crate::convert::row_text(source.parse().unwrap(), &r);
        n
    }

    /// Three simulated hosts: each one's UNLOAD time distribution comes back as its own
    /// p50/p99, the pending ship step has no time, and --host filters.
    #[test]
    fn step_stats_give_p50_and_p99_per_step_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("c.db"), Sync::Normal).unwrap();
        let mut recs = Vec::new();
        let mut seq = 0;
        for (host, base) in [
            ("10.0.0.1", 1000u32),
            ("10.0.0.2", 50_000),
            ("[fd00::3]", 10),
        ] {
            for i in 1..=100u32 {
                seq += 1;
                let src = format!("{host}:{}", 40000 + i);
                recs.push(record(seq, &src, base * i, (i % 2 == 0).then_some(i)));
            }
        }
        st.commit_batch(&recs, &[], &[], &[]).unwrap();
        let all = st.step_stats(None).unwrap();
        let get = |h: &str, s: &str| {
            all.iter()
                .find(|x| x.host == h && x.step == s)
                .unwrap_or_else(|| panic!("no {h} {s} in {all:?}"))
                .clone()
        };
        let a = get("10.0.0.1", "vmbus-unload");
        assert_eq!(
            (a.records, a.p50_us, a.p99_us, a.max_us),
            (100, 50_000, 99_000, 100_000)
        );
        let b = get("10.0.0.2", "vmbus-unload");
        assert_eq!((b.p50_us, b.p99_us), (2_500_000, 4_950_000));
        let c = get("fd00::3", "vmbus-unload");
        assert_eq!((c.p50_us, c.p99_us), (500, 990));
        // Only the records whose ship step was done have a ship time.
        assert_eq!(get("10.0.0.1", "ship").records, 50);
        assert!(!all.iter().any(|x| x.step == "screen-flush"));
        let only = st.step_stats(Some("10.0.0.2")).unwrap();
        assert!(only.iter().all(|x| x.host == "10.0.0.2"));
        assert_eq!(only.len(), 3);
    }
}
