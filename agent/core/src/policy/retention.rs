//! Retention: which backups a store keeps, as a pure function of (backups, now, rules).
//!
//! The rules are the GFS rules users know from restic and borg:
//! - `keep_last N`: the N newest backups;
//! - `keep_hourly/daily/weekly/monthly/yearly N`: walking from the newest backup to the
//!   oldest, the newest backup of each of the N most recent hours/days/ISO weeks/months/
//!   years that have a backup (UTC);
//! - `keep_within D`: every backup younger than D (measured from `now`, as borg does).
//!
//! A backup is kept when any rule keeps it. Safety rules that hold whatever the
//! configuration:
//! - with no rule set, nothing is deleted;
//! - the newest backup that meets the 3-2-1 policy is always kept, and so is the newest
//!   backup of all (if none is compliant, the newest is the best there is);
//! - a backup dated after `now` (clock skew) is kept.
//!
//! Foreign objects never reach this function: the caller builds candidates only from
//! names that parse as our backups (see [`candidates_from_names`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Retention rules of one store; all zero / None means "keep everything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within: Option<chrono::Duration>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none()
    }

    /// Each rule alone, for the "at least what each rule keeps" invariant and for docs.
    pub fn split(&self) -> Vec<Rules> {
        let z = Rules::default();
        let mut v = Vec::new();
        let mut push = |r: Rules| {
            if !r.is_empty() {
                v.push(r)
            }
        };
        push(Rules {
            keep_last: self.keep_last,
            ..z.clone()
        });
        push(Rules {
            keep_hourly: self.keep_hourly,
            ..z.clone()
        });
        push(Rules {
            keep_daily: self.keep_daily,
            ..z.clone()
        });
        push(Rules {
            keep_weekly: self.keep_weekly,
            ..z.clone()
        });
        push(Rules {
            keep_monthly: self.keep_monthly,
            ..z.clone()
        });
        push(Rules {
            keep_yearly: self.keep_yearly,
            ..z.clone()
        });
        push(Rules {
            keep_within: self.keep_within,
            ..z
        });
        v
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
    /// Whether the backup meets the 3-2-1 policy.
    pub compliant: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (every rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

/// Candidates from a store listing: only names that are our backup ids (a manifest name
/// `mariadb_YYYY-MM-DD_HHMMSS.manifest.json`); everything else is ignored.
pub fn candidates_from_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    compliant: &dyn Fn(&str) -> bool,
) -> Vec<Candidate> {
    let mut ids = BTreeSet::new();
    for n in names {
        if let Some(id) = n.strip_suffix(crate::layout::MANIFEST_SUFFIX) {
            if crate::layout::is_backup_id(id) {
                ids.insert(id.to_string());
            }
        }
    }
    ids.into_iter()
        .filter_map(|id| {
            let t = crate::layout::id_time(&id)?;
            Some(Candidate {
                compliant: compliant(&id),
                id,
                time: t,
            })
        })
        .collect()
}

/// The plan: one decision per distinct backup id, newest first.
pub fn plan(backups: &[Candidate], now: DateTime<Utc>, rules: &Rules) -> Vec<Decision> {
    // Newest first; ties broken by id so that listing order never matters.
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    sorted.dedup_by(|a, b| a.id == b.id);

    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let keep = |id: &str, why: String, reasons: &mut BTreeMap<String, Vec<String>>| {
        reasons.entry(id.to_string()).or_default().push(why);
    };

    if rules.is_empty() {
        return sorted
            .iter()
            .map(|c| Decision {
                id: c.id.clone(),
                time: c.time,
                keep: true,
                reasons: vec!["no retention rule set: nothing is deleted".into()],
            })
            .collect();
    }

    for (i, c) in sorted.iter().enumerate() {
        if (i as u64) < rules.keep_last as u64 {
            keep(
                &c.id,
                format!("last {}/{}", i + 1, rules.keep_last),
                &mut reasons,
            );
        }
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let buckets: [(&str, u32, Bucket); 5] = [
        ("hourly", rules.keep_hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        ("daily", rules.keep_daily, |t| (t.year(), t.ordinal(), 0, 0)),
        ("weekly", rules.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        ("monthly", rules.keep_monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
        ("yearly", rules.keep_yearly, |t| (t.year(), 0, 0, 0)),
    ];
    for (name, n, bucket) in buckets {
        if n == 0 {
            continue;
        }
        let mut seen = BTreeSet::new();
        for c in &sorted {
            if seen.len() as u32 >= n {
                break;
            }
            if seen.insert(bucket(&c.time)) {
                keep(&c.id, format!("{name} {}/{n}", seen.len()), &mut reasons);
            }
        }
    }
    if let Some(w) = rules.keep_within {
        for c in &sorted {
            if c.time > now - w {
                keep(
                    &c.id,
                    format!(
                        "within {}",
                        humantime::format_duration(w.to_std().unwrap_or_default())
                    ),
                    &mut reasons,
                );
            }
        }
    }
    // Safety rules.
    if let Some(c) = sorted.iter().find(|c| c.compliant) {
        keep(
            &c.id,
            "newest compliant backup (always kept)".into(),
            &mut reasons,
        );
    }
    if let Some(c) = sorted.first() {
        keep(&c.id, "newest backup (always kept)".into(), &mut reasons);
    }
    for c in &sorted {
        if c.time > now {
            keep(
                &c.id,
                "dated in the future (clock skew?)".into(),
                &mut reasons,
            );
        }
    }

    sorted
        .iter()
        .map(|c| match reasons.get(&c.id) {
            Some(r) => Decision {
                id: c.id.clone(),
                time: c.time,
                keep: true,
                reasons: r.clone(),
            },
            None => Decision {
                id: c.id.clone(),
                time: c.time,
                keep: false,
                reasons: vec!["no rule keeps it".into()],
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cand(t: DateTime<Utc>, compliant: bool) -> Candidate {
        Candidate {
            id: crate::layout::backup_id(t),
            time: t,
            compliant,
        }
    }

    fn kept(d: &[Decision]) -> BTreeSet<String> {
        d.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect()
    }

    #[test]
    fn daily_month_keeps_the_newest_of_each_day() {
        let now = at("2026-11-30T12:00:00Z");
        let mut v = Vec::new();
        for day in 1..=30 {
            for hour in [2, 14] {
                let t = at(&format!("2026-11-{day:02}T{hour:02}:00:00Z"));
                if t <= now {
                    v.push(cand(t, true));
                }
            }
        }
        let rules = Rules {
            keep_daily: 7,
            keep_weekly: 4,
            ..Rules::default()
        };
        let d = plan(&v, now, &rules);
        let k = kept(&d);
        // 7 days (the newest of each), plus the newest of 4 ISO weeks (some coincide).
        assert!(k.contains("mariadb_2026-11-30_020000"));
        assert!(k.contains("mariadb_2026-11-24_140000"));
        assert!(!k.contains("mariadb_2026-11-24_020000"));
        assert!(
            k.contains("mariadb_2026-11-15_140000"),
            "weekly: Sunday of week 46"
        );
        assert!(!k.contains("mariadb_2026-11-01_140000"), "{k:?}");
        let r = &d
            .iter()
            .find(|x| x.id == "mariadb_2026-11-30_020000")
            .unwrap()
            .reasons;
        assert!(r.iter().any(|x| x == "daily 1/7"), "{r:?}");
    }

    #[test]
    fn no_rules_keep_everything_and_the_newest_compliant_always_stays() {
        let now = at("2026-11-30T12:00:00Z");
        let v = vec![
            cand(at("2026-11-29T02:00:00Z"), true),
            cand(at("2026-11-30T02:00:00Z"), false),
        ];
        assert_eq!(kept(&plan(&v, now, &Rules::default())).len(), 2);
        let rules = Rules {
            keep_last: 1,
            ..Rules::default()
        };
        assert_eq!(
            kept(&plan(&v, now, &rules)).len(),
            2,
            "newest compliant kept"
        );
    }

    fn arb_history() -> impl Strategy<Value = (Vec<Candidate>, i64)> {
        // Up to 120 backups over about 3 years, some compliant, duplicates possible.
        (
            prop::collection::vec((0i64..(3 * 365 * 86400), any::<bool>()), 0..120),
            0i64..86400 * 30,
        )
            .prop_map(|(v, extra)| {
                let base = at("2024-01-01T00:00:00Z");
                let c: Vec<Candidate> = v
                    .into_iter()
                    .map(|(s, ok)| cand(base + chrono::Duration::seconds(s), ok))
                    .collect();
                (c, extra)
            })
    }

    fn arb_rules() -> impl Strategy<Value = Rules> {
        (
            0u32..5,
            0u32..30,
            0u32..15,
            0u32..10,
            0u32..15,
            0u32..4,
            prop::option::of(1i64..90),
        )
            .prop_map(|(l, h, d, w, m, y, within)| Rules {
                keep_last: l,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
                keep_within: within.map(chrono::Duration::days),
            })
    }

    fn now_of(v: &[Candidate], extra: i64) -> DateTime<Utc> {
        v.iter()
            .map(|c| c.time)
            .max()
            .unwrap_or_else(|| at("2027-01-01T00:00:00Z"))
            + chrono::Duration::seconds(extra)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn newest_compliant_is_kept((v, extra) in arb_history(), rules in arb_rules()) {
            let now = now_of(&v, extra);
            let k = kept(&plan(&v, now, &rules));
            if let Some(c) = v.iter().filter(|c| c.compliant).max_by(|a, b| a.time.cmp(&b.time)) {
                prop_assert!(k.contains(&c.id));
            }
            if let Some(c) = v.iter().max_by(|a, b| a.time.cmp(&b.time)) {
                prop_assert!(k.contains(&c.id));
            }
        }

        #[test]
        fn pruning_twice_deletes_nothing_more((v, extra) in arb_history(), rules in arb_rules()) {
            let now = now_of(&v, extra);
            let first = plan(&v, now, &rules);
            let k1 = kept(&first);
            let survivors: Vec<Candidate> = v.iter().filter(|c| k1.contains(&c.id)).cloned().collect();
            let second = plan(&survivors, now, &rules);
            prop_assert!(second.iter().all(|d| d.keep), "second run deletes {:?}",
                second.iter().filter(|d| !d.keep).map(|d| &d.id).collect::<Vec<_>>());
        }

        #[test]
        fn listing_order_does_not_matter((v, extra) in arb_history(), rules in arb_rules(), seed in any::<u64>()) {
            let now = now_of(&v, extra);
            let mut shuffled = v.clone();
            // Deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(plan(&v, now, &rules), plan(&shuffled, now, &rules));
        }

        #[test]
        fn keeps_at_least_what_each_rule_alone_keeps((v, extra) in arb_history(), rules in arb_rules()) {
            let now = now_of(&v, extra);
            let all = kept(&plan(&v, now, &rules));
            for one in rules.split() {
                let alone = kept(&plan(&v, now, &one));
                prop_assert!(alone.is_subset(&all), "rule {:?} keeps {:?} that the whole set drops", one, alone.difference(&all).collect::<Vec<_>>());
            }
        }

        #[test]
        fn no_rules_delete_nothing((v, extra) in arb_history()) {
            let now = now_of(&v, extra);
            prop_assert!(plan(&v, now, &Rules::default()).iter().all(|d| d.keep));
        }

        #[test]
        fn foreign_names_never_reach_the_plan(
            (v, extra) in arb_history(),
            rules in arb_rules(),
            foreign in prop::collection::vec("[a-zA-Z0-9_./-]{1,40}", 0..30),
        ) {
            let now = now_of(&v, extra);
            let ours: Vec<String> = v.iter().map(|c| format!("{}{}", c.id, crate::layout::MANIFEST_SUFFIX)).collect();
            let mut names: Vec<String> = ours.clone();
            // Look-alikes and arbitrary names: other prefixes, other suffixes, bad dates.
            names.extend(foreign.iter().cloned());
            names.extend(v.iter().map(|c| format!("x{}{}", c.id, crate::layout::MANIFEST_SUFFIX)));
            names.extend(v.iter().map(|c| format!("{}.manifest.json.bak", c.id)));
            names.push("mariadb_2026-13-40_999999.manifest.json".into());
            let cands = candidates_from_names(names.iter().map(|s| s.as_str()), &|_| true);
            let ids: BTreeSet<String> = v.iter().map(|c| c.id.clone()).collect();
            for d in plan(&cands, now, &rules) {
                prop_assert!(ids.contains(&d.id), "foreign {} in the plan", d.id);
            }
        }
    }
}
