//! Cron schedules: the usual 5-field crontab lines (minute hour day month weekday, with
//! crontab's weekday numbers 0-7, Sunday = 0 or 7) and 6-field lines with seconds first,
//! read in a configured IANA time zone.

use std::str::FromStr;

use backup_core::config::{ScheduleProblem, ScheduleSpec};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
}

impl Schedule {
    /// The schedule of a loaded configuration.
    pub fn of(spec: &ScheduleSpec) -> Result<Schedule, ScheduleProblem> {
        Schedule::parse(&spec.expr, &spec.timezone)
    }

    /// The check the configuration loader runs on every source's schedule.
    pub fn check(expr: &str, tz: &str) -> Result<(), ScheduleProblem> {
        Schedule::parse(expr, tz).map(drop)
    }

    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, ScheduleProblem> {
        let bad = |message: String| ScheduleProblem {
            time_zone: false,
            message,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        check_ranges(expr, &fields)?;
        let full = match fields.len() {
            5 => {
                let dow = crontab_weekdays(fields[4])?;
                format!("0 {} {} {} {} {}", fields[0], fields[1], fields[2], fields[3], dow)
            }
            6 => expr.to_string(),
            _ => {
                return Err(bad(format!(
                    "{expr:?} is not a cron schedule: give 5 fields (minute hour day month weekday) or 6 with seconds first"
                )))
            }
        };
        let cron = cron::Schedule::from_str(&full)
            .map_err(|e| bad(format!("{expr:?} is not a valid cron schedule: {e}")))?;
        let tz: Tz = tz.parse().map_err(|_| ScheduleProblem {
            time_zone: true,
            message: format!(
                "unknown time zone {tz:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\""
            ),
        })?;
        if cron.after(&Utc::now().with_timezone(&tz)).next().is_none() {
            return Err(bad(format!("{expr:?} never fires")));
        }
        Ok(Schedule { cron, tz })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest slot in (since, now], if any: the one run a restarted daemon owes.
    pub fn missed_slot(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut last = None;
        // Bounded: a per-second schedule missed for 12 days is a million slots.
        for slot in self
            .cron
            .after(&since.with_timezone(&self.tz))
            .take(1_000_000)
        {
            let slot = slot.with_timezone(&Utc);
            if slot > now {
                break;
            }
            last = Some(slot);
        }
        last
    }
}

/// Names a number outside its field's range (the cron crate's own words for it are
/// misleading: "Minutes must be less than 59").
fn check_ranges(expr: &str, fields: &[&str]) -> Result<(), ScheduleProblem> {
    const FIVE: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("weekday", 0, 7),
    ];
    let names: Vec<(&str, u32, u32)> = match fields.len() {
        5 => FIVE.to_vec(),
        // With seconds first; the weekday follows the cron crate (1-7), checked by it.
        6 => std::iter::once(("second", 0, 59))
            .chain(FIVE[..4].iter().copied())
            .collect(),
        _ => return Ok(()),
    };
    for (field, (name, lo, hi)) in fields.iter().zip(names) {
        for item in field.split(',') {
            let range = item.split('/').next().unwrap_or(item);
            for n in range.split('-').filter_map(|x| x.parse::<u32>().ok()) {
                if n < lo || n > hi {
                    return Err(ScheduleProblem {
                        time_zone: false,
                        message: format!("{expr:?}: {name} {n} is out of range {lo}-{hi}"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Translates crontab weekday numbers (0-7, Sunday = 0 and 7) to names, which the cron
/// crate reads the same way (its numbers are 1-7 with Sunday = 1).
fn crontab_weekdays(field: &str) -> Result<String, ScheduleProblem> {
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    let name = |s: &str| -> Result<String, ScheduleProblem> {
        match s.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(NAMES[n].to_string()),
            Ok(_) => Err(ScheduleProblem {
                time_zone: false,
                message: format!("weekday {s} is out of range 0-7"),
            }),
            Err(_) => Ok(s.to_string()),
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let step = step.map(|s| format!("/{s}")).unwrap_or_default();
        match range.split_once('-') {
            Some((a, "7")) if step.is_empty() && a != "0" => {
                // a-7 ends on Sunday: a..Saturday, and Sunday.
                out.push(format!("{}-SAT", name(a)?));
                out.push("SUN".into());
            }
            Some((a, b)) => out.push(format!("{}-{}{step}", name(a)?, name(b)?)),
            None if range == "*" => out.push(format!("*{step}")),
            None => out.push(format!("{}{step}", name(range)?)),
        }
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields() {
        let s = Schedule::parse("30 2 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-21T01:00:00Z")),
            Some(at("2026-11-21T02:30:00Z"))
        );
        let s = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-21T01:00:01Z")),
            Some(at("2026-11-21T01:00:10Z"))
        );
        assert!(Schedule::parse("* * *", "UTC").is_err());
        assert!(Schedule::parse("61 * * * *", "UTC").is_err());
        assert_eq!(
            Schedule::parse("61 * * * *", "UTC").unwrap_err().message,
            "\"61 * * * *\": minute 61 is out of range 0-59"
        );
        assert!(Schedule::parse("0 24 * * *", "UTC")
            .unwrap_err()
            .message
            .contains("hour 24 is out of range 0-23"));
        assert!(Schedule::parse("0 0 0 * *", "UTC")
            .unwrap_err()
            .message
            .contains("day of month 0"));
        assert!(Schedule::parse("0 0 * 1-13 *", "UTC").is_err());
        assert!(Schedule::parse("0 0 * * 8", "UTC").is_err());
        assert!(Schedule::parse("59 23 31 12 7", "UTC").is_ok());
        assert!(Schedule::parse("0 2 * * *", "Mars/Olympus")
            .unwrap_err()
            .message
            .contains("time zone"));
    }

    #[test]
    fn crontab_weekday_numbers() {
        // 2026-11-23 is a Monday.
        let s = Schedule::parse("0 9 * * 1-5", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2026-11-23T09:00:00Z"))
        );
        let sun = Schedule::parse("0 9 * * 0", "UTC").unwrap();
        let sun7 = Schedule::parse("0 9 * * 7", "UTC").unwrap();
        assert_eq!(
            sun.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2026-11-22T09:00:00Z"))
        );
        assert_eq!(
            sun7.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2026-11-22T09:00:00Z"))
        );
        let weekend = Schedule::parse("0 9 * * 6-7", "UTC").unwrap();
        assert_eq!(
            weekend.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2026-11-22T09:00:00Z"))
        );
    }

    #[test]
    fn time_zone_is_respected() {
        let s = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(at("2026-11-21T00:00:00Z")),
            Some(at("2026-11-21T01:00:00Z"))
        );
    }

    #[test]
    fn missed_slot_is_the_latest_one_only() {
        let s = Schedule::parse("0 2 * * *", "UTC").unwrap();
        let since = at("2026-11-18T02:00:00Z");
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(s.missed_slot(since, now), Some(at("2026-11-21T02:00:00Z")));
        assert_eq!(s.missed_slot(at("2026-11-21T02:00:00Z"), now), None);
        let _ = Utc.timestamp_opt(0, 0);
    }
}
