//! Record streams as the stores keep them: the streams, one record, its time-sortable id,
//! the day buckets backends file records under, and a time range to read.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where records are kept: all learning data, or the security logs of one user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordStream {
    Learning,
    Security {
        user: String,
    },
    /// A stream of one tenant (see `store::tenant`).
    Tenant {
        tenant: String,
        stream: Box<RecordStream>,
    },
}

impl RecordStream {
    /// A name for the stream, unique across streams; backends encode it into their keys.
    pub fn name(&self) -> String {
        match self {
            RecordStream::Learning => "learning".to_string(),
            RecordStream::Security { user } => format!("security:{user}"),
            RecordStream::Tenant { tenant, stream } => format!("tenant:{tenant}:{}", stream.name()),
        }
    }
}

/// Live records by kind, of the whole store or of one tenant: what GetStats reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub learning: u64,
    pub security: u64,
}

impl RecordCounts {
    /// Counts `count` records of the stream named `name` (see [`RecordStream::name`]) when
    /// it is within `tenant`'s streams, or, with no tenant, whoever's it is. Streams of
    /// tenants nested inside the scope (decorators stacked in tests) count too.
    pub fn add(&mut self, name: &str, tenant: Option<&str>, count: u64) {
        let within = match tenant {
            Some(tenant) => name
                .strip_prefix("tenant:")
                .and_then(|rest| rest.strip_prefix(tenant))
                .and_then(|rest| rest.strip_prefix(':')),
            None => Some(name),
        };
        let Some(mut own) = within else {
            return;
        };
        while let Some((_, inner)) = own
            .strip_prefix("tenant:")
            .and_then(|rest| rest.split_once(':'))
        {
            own = inner;
        }
        if own == "learning" {
            self.learning += count;
        } else if own.starts_with("security:") {
            self.security += count;
        }
    }
}

/// One stored record. Its id sorts by time: 16 hex digits of microseconds since the
/// epoch, then 8 of a per-process counter mixed with randomness, so ids never collide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub expire_time: SystemTime,
    /// The record's JSON.
    pub body: String,
}

/// Length of a record id.
pub const ID_LEN: usize = 24;

impl Record {
    /// When the record was made, from its id.
    pub fn time(&self) -> SystemTime {
        time_of_id(&self.id).unwrap_or(UNIX_EPOCH)
    }
}

/// Microseconds since the epoch.
pub fn micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A new id for a record made at `time`.
pub fn new_id(time: SystemTime) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let salt = COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9)
        ^ (std::process::id().rotate_left(16))
        ^ (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()));
    id_at(time, salt)
}

/// The id of a record made at `time` with a chosen `salt`: a migration derives the salt
/// from the record's content, so a re-run writes the same ids instead of duplicates.
pub fn id_at(time: SystemTime, salt: u32) -> String {
    format!("{:016x}{salt:08x}", micros(time))
}

/// The smallest id of records made at or after `time`: a prefix of their ids.
pub fn id_floor(time: SystemTime) -> String {
    format!("{:016x}", micros(time))
}

pub fn time_of_id(id: &str) -> Option<SystemTime> {
    let micros = u64::from_str_radix(id.get(..16)?, 16).ok()?;
    Some(UNIX_EPOCH + Duration::from_micros(micros))
}

/// The UTC day (days since the epoch) of a time: the partition of per-day layouts.
pub fn day_of(time: SystemTime) -> u64 {
    micros(time) / 86_400_000_000
}

/// The day's name in keys, `YYYY-MM-DD`.
pub fn day_name(day: u64) -> String {
    let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(day * 86_400))
        .to_string();
    text[..10].to_string()
}

/// A read of one stream: records made in `[from, to)`, with ids greater than `after`,
/// oldest first, at most `limit`. Expired records are never returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRange {
    pub from: SystemTime,
    pub to: SystemTime,
    pub after: Option<String>,
    pub limit: usize,
}

impl RecordRange {
    /// The smallest id the range may return (inclusive).
    pub fn low_id(&self) -> String {
        let floor = id_floor(self.from);
        match &self.after {
            // '~' sorts after every hex digit and after the separators backends put
            // behind an id ('|' in Redis), so this excludes `after` and nothing later.
            Some(after) if after.as_str() >= floor.as_str() => format!("{after}~"),
            _ => floor,
        }
    }

    /// The smallest id the range must not return (exclusive).
    pub fn high_id(&self) -> String {
        id_floor(self.to)
    }

    /// True if no id can be inside the range.
    pub fn is_empty(&self) -> bool {
        self.low_id() >= self.high_id()
    }

    /// True if `id` is inside the range.
    pub fn contains(&self, id: &str) -> bool {
        id >= self.low_id().as_str() && id < self.high_id().as_str()
    }

    /// The days a per-day layout must read, oldest first.
    pub fn days(&self) -> std::ops::RangeInclusive<u64> {
        let last = self
            .to
            .checked_sub(Duration::from_micros(1))
            .unwrap_or(self.to);
        day_of(self.from)..=day_of(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_keep_to_their_tenant() {
        let names = [
            "learning",
            "security:ana",
            "tenant:a:learning",
            "tenant:a:security:ana:x",
            "tenant:ab:learning",
            "tenant:a:tenant:b:learning",
            "sessions",
        ];
        let count = |tenant: Option<&str>| {
            let mut counts = RecordCounts::default();
            for name in names {
                counts.add(name, tenant, 1);
            }
            (counts.learning, counts.security)
        };
        assert_eq!(count(None), (4, 2));
        assert_eq!(count(Some("a")), (2, 1));
        assert_eq!(count(Some("a:tenant:b")), (1, 0));
        assert_eq!(count(Some("b")), (0, 0));
    }

    #[test]
    fn ids_sort_by_time_and_never_collide() {
        let now = SystemTime::now();
        let ids: Vec<String> = (0..1000).map(|_| new_id(now)).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == ID_LEN));
        let later = new_id(now + Duration::from_micros(1));
        assert!(ids.iter().all(|id| *id < later));
        assert_eq!(
            micros(
                Record {
                    id: later,
                    expire_time: now,
                    body: String::new()
                }
                .time()
            ),
            micros(now) + 1
        );
    }

    #[test]
    fn ranges_bound_ids_and_days() {
        let day = Duration::from_secs(86_400);
        let from = UNIX_EPOCH + day * 20_000 + Duration::from_secs(3600);
        let to = from + day;
        let range = RecordRange {
            from,
            to,
            after: None,
            limit: 10,
        };
        assert!(range.contains(&new_id(from)));
        assert!(!range.contains(&new_id(to)));
        assert!(!range.contains(&new_id(from - Duration::from_micros(1))));
        assert_eq!(range.days(), 20_000..=20_001);
        assert_eq!(day_name(20_000), "2024-10-04");
        let exact = RecordRange {
            from: UNIX_EPOCH + day * 3,
            to: UNIX_EPOCH + day * 4,
            after: None,
            limit: 1,
        };
        assert_eq!(
            exact.days(),
            3..=3,
            "a range ending at midnight does not read the next day"
        );

        let first = new_id(from + Duration::from_secs(5));
        let paged = RecordRange {
            after: Some(first.clone()),
            ..range
        };
        assert!(!paged.contains(&first));
        assert!(paged.contains(&new_id(from + Duration::from_secs(6))));
    }
}
