//! CronJob schedules, read in their time zone; parsed once by validation and the controller.

use std::str::FromStr;

/// A CronJob schedule: five cron fields (or a macro such as `@hourly`) read in a time zone: the
/// spec's `timeZone`, else a legacy `TZ=`/`CRON_TZ=` prefix, else the server's local zone (as
/// upstream's controller manager does).
pub struct Schedule {
    cron: croner::Cron,
    zone: Option<chrono_tz::Tz>,
}

impl Schedule {
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let trimmed = schedule.trim();
        let (prefix_zone, expr) = match trimmed
            .strip_prefix("TZ=")
            .or_else(|| trimmed.strip_prefix("CRON_TZ="))
        {
            Some(rest) => match rest.split_once(' ') {
                Some((zone, expr)) => (Some(zone), expr.trim()),
                None => return Err(format!("missing schedule after time zone: {schedule}")),
            },
            None => (None, trimmed),
        };
        let fields = expr.split_whitespace().count();
        if !expr.starts_with('@') && fields != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {fields}: {schedule}"
            ));
        }
        let cron = croner::Cron::from_str(expr).map_err(|e| e.to_string())?;
        let zone = time_zone.or(prefix_zone).map(zone).transpose()?;
        Ok(Schedule { cron, zone })
    }

    /// The latest schedule time in (after, now], if any.
    pub fn latest_due(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        fn latest<Z: chrono::TimeZone + Copy>(
            cron: &croner::Cron,
            now: chrono::DateTime<Z>,
        ) -> Option<i64> {
            cron.iter_from(now, croner::Direction::Backward)
                .next()
                .map(|t| t.timestamp())
        }
        let t = match &self.zone {
            Some(z) => latest(&self.cron, now.with_timezone(z)),
            None => latest(&self.cron, now.with_timezone(&chrono::Local)),
        }?;
        chrono::DateTime::from_timestamp(t, 0).filter(|t| *t > after && *t <= now)
    }
}

/// An IANA time zone by name, with upstream's error text for unknown ones.
pub fn zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse()
        .map_err(|_| format!("unknown time zone {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn schedules_are_read_in_their_time_zone() {
        let now = Utc.with_ymd_and_hms(2026, 7, 1, 0, 30, 0).unwrap();
        let day_before = now - chrono::Duration::days(1);
        // 09:00 in Tokyo (UTC+9) is 00:00 UTC.
        let tokyo = Schedule::parse("0 9 * * *", Some("Asia/Tokyo")).unwrap();
        assert_eq!(
            tokyo.latest_due(day_before, now),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap())
        );
        // 09:00 in Berlin in summer (UTC+2) is 07:00 UTC, and in winter (UTC+1) 08:00 UTC.
        let berlin = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            berlin.latest_due(day_before, now),
            Some(Utc.with_ymd_and_hms(2026, 6, 30, 7, 0, 0).unwrap())
        );
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        assert_eq!(
            berlin.latest_due(winter - chrono::Duration::days(1), winter),
            Some(Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap())
        );
        // The legacy prefix names a zone too; nothing due inside an empty window.
        let legacy = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", None).unwrap();
        assert_eq!(
            legacy.latest_due(day_before, now),
            tokyo.latest_due(day_before, now)
        );
        assert_eq!(
            tokyo.latest_due(now - chrono::Duration::minutes(5), now),
            None
        );
    }

    #[test]
    fn bad_schedules_and_zones_are_refused() {
        assert_eq!(
            Schedule::parse("0 9 * * *", Some("Mars/Olympus"))
                .err()
                .as_deref(),
            Some("unknown time zone Mars/Olympus")
        );
        assert!(Schedule::parse("0 9 * *", None).is_err());
        assert!(Schedule::parse("TZ=UTC", None).is_err());
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("@hourly", None).is_ok());
    }
}
