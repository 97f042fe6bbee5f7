//! [`Schedule`]: when a [periodic job](crate::periodic) runs. A 5-field cron expression or a
//! fixed interval, evaluated in **UTC** (no time zone database, no daylight-saving gaps).
//!
//! # Cron expressions
//!
//! Five fields separated by spaces:
//!
//! | field | values | names |
//! |---|---|---|
//! | minute | 0-59 | |
//! | hour | 0-23 | |
//! | day of month | 1-31 | |
//! | month | 1-12 | `JAN`..`DEC` |
//! | day of week | 0-7 (0 and 7 are Sunday) | `SUN`..`SAT` |
//!
//! Each field is `*` or a comma-separated list of `a`, `a-b` (inclusive, `a` not after `b`),
//! `*/n`, `a-b/n` and `a/n` (from `a` to the field's last value, every `n`). Names are
//! case-insensitive and work in ranges (`MON-FRI`; a range may end on `SUN`, as 7:
//! `FRI-SUN`).
//!
//! Day of month and day of week follow the crontab(5) rule: when **both** are restricted
//! (neither starts with `*`), a day matches if **either** matches (`0 0 1,15 * MON` runs on
//! the 1st, the 15th and every Monday); otherwise a day must match both.
//!
//! Macros: `@yearly` / `@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly`
//! (`0 0 * * 0`), `@daily` / `@midnight` (`0 0 * * *`), `@hourly` (`0 * * * *`).
//!
//! An expression that can never fire (`0 0 30 2 *`: there is no February 30) is refused.
//!
//! # Intervals
//!
//! [`Schedule::every`] ticks at every multiple of a period since the Unix epoch, for periods
//! shorter than a minute (or not dividing an hour). Aligning on the epoch, not on when a
//! process started, lets every process sharing a database agree on the ticks. Written as
//! `@every 30s` (units `us`, `ms`, `s`, `m`, `h`), which [`Schedule::cron`] parses too.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use palisade_jobs::Schedule;
//!
//! let weekdays = Schedule::cron("30 9 * * MON-FRI")?;
//! // 2024-01-06 is a Saturday: the next run is Monday 2024-01-08 09:30 UTC.
//! let saturday = UNIX_EPOCH + Duration::from_secs(1_704_499_200);
//! let next = weekdays.next_after(saturday).unwrap();
//! assert_eq!(next, UNIX_EPOCH + Duration::from_secs(1_704_706_200));
//!
//! let often = Schedule::every(Duration::from_secs(15))?;
//! assert_eq!(often.to_string(), "@every 15s");
//! # Ok::<(), palisade_jobs::ScheduleError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When a periodic job runs: a cron expression or a fixed interval, in UTC; see the
/// [module docs](self).
///
/// Two schedules are equal when their expressions are written the same way (after
/// normalising spaces): that is how a periodic job notices that its schedule changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schedule {
    kind: Kind,
    expression: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Cron(Cron),
    /// The period in microseconds, at least 1.
    Every(u64),
}

/// A parsed cron expression: one bit per allowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday is 0.
    weekdays: u8,
    /// The day-of-month field starts with `*` (crontab(5): not restricted).
    days_star: bool,
    /// The day-of-week field starts with `*`.
    weekdays_star: bool,
}

/// A field of a cron expression, as named in a [`ScheduleError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CronField {
    /// The first field, 0-59.
    Minute,
    /// The second field, 0-23.
    Hour,
    /// The third field, 1-31.
    DayOfMonth,
    /// The fourth field, 1-12 or `JAN`..`DEC`.
    Month,
    /// The fifth field, 0-7 (0 and 7 are Sunday) or `SUN`..`SAT`.
    DayOfWeek,
}

impl CronField {
    const ALL: [Self; 5] = [
        Self::Minute,
        Self::Hour,
        Self::DayOfMonth,
        Self::Month,
        Self::DayOfWeek,
    ];

    /// The smallest and largest value the field accepts.
    #[must_use]
    pub const fn bounds(self) -> (u32, u32) {
        match self {
            Self::Minute => (0, 59),
            Self::Hour => (0, 23),
            Self::DayOfMonth => (1, 31),
            Self::Month => (1, 12),
            Self::DayOfWeek => (0, 7),
        }
    }

    /// The last value `*` and `a/n` reach (day of week: 6, as 7 is Sunday again).
    const fn last(self) -> u32 {
        match self {
            Self::DayOfWeek => 6,
            other => other.bounds().1,
        }
    }

    const fn names(self) -> &'static [&'static str] {
        match self {
            Self::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            Self::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }

    /// The value of the first name (1 for `JAN`, 0 for `SUN`).
    const fn first_name_value(self) -> u32 {
        match self {
            Self::Month => 1,
            _ => 0,
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::DayOfMonth => "day-of-month",
            Self::Month => "month",
            Self::DayOfWeek => "day-of-week",
        })
    }
}

/// What is wrong with one token of a cron field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldProblem {
    /// Nothing between two commas, or an empty range end or step.
    Empty,
    /// Neither a number nor a name the field knows.
    NotANumber,
    /// A value outside the field's bounds.
    OutOfRange {
        /// The smallest value allowed.
        min: u32,
        /// The largest value allowed.
        max: u32,
    },
    /// A range whose start is after its end (ranges do not wrap around).
    Backwards,
    /// A step of zero.
    ZeroStep,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("is empty"),
            Self::NotANumber => f.write_str("is not a number or a name"),
            Self::OutOfRange { min, max } => write!(f, "is out of range {min}-{max}"),
            Self::Backwards => f.write_str("is a range whose start is after its end"),
            Self::ZeroStep => f.write_str("has a step of zero"),
        }
    }
}

/// Why a [`Schedule`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The expression does not have five fields and is not a macro.
    #[error(
        "cron expression `{expression}` has {found} fields; expected 5 (minute hour day-of-month month day-of-week) or a macro such as @daily"
    )]
    FieldCount {
        /// The expression.
        expression: String,
        /// How many fields it has.
        found: usize,
    },
    /// A field holds a token it cannot accept.
    #[error("cron {field} field: `{token}` {problem}")]
    Field {
        /// The field.
        field: CronField,
        /// The bad token (one comma-separated part of the field).
        token: String,
        /// What is wrong with it.
        problem: FieldProblem,
    },
    /// An `@` word that is not one of the macros.
    #[error(
        "unknown cron macro `{0}`; expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <period>"
    )]
    UnknownMacro(String),
    /// The expression is valid but no day can ever match it (`0 0 30 2 *`).
    #[error("cron expression `{0}` never fires: none of its months has such a day")]
    Never(String),
    /// An interval that is zero, shorter than a microsecond, or written wrongly.
    #[error("invalid interval `{0}`: expected a whole number of us, ms, s, m or h, at least 1 us")]
    Interval(String),
}

impl Schedule {
    /// Parses a cron expression, a macro (`@daily`), or `@every <period>`; see the
    /// [module docs](self).
    ///
    /// # Errors
    ///
    /// [`ScheduleError`] naming the field and the token that is wrong, or saying that the
    /// expression never fires.
    pub fn cron(expression: &str) -> Result<Self, ScheduleError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let normalized = fields.join(" ");
        if let Some(word) = fields.first().filter(|word| word.starts_with('@')) {
            let word = word.to_ascii_lowercase();
            if word == "@every" {
                return match fields.as_slice() {
                    [_, period] => Self::every(
                        parse_period(period)
                            .ok_or_else(|| ScheduleError::Interval((*period).to_owned()))?,
                    )
                    .map_err(|_| ScheduleError::Interval((*period).to_owned())),
                    _ => Err(ScheduleError::Interval(normalized)),
                };
            }
            let expanded = match (word.as_str(), fields.len()) {
                ("@yearly" | "@annually", 1) => "0 0 1 1 *",
                ("@monthly", 1) => "0 0 1 * *",
                ("@weekly", 1) => "0 0 * * 0",
                ("@daily" | "@midnight", 1) => "0 0 * * *",
                ("@hourly", 1) => "0 * * * *",
                _ => return Err(ScheduleError::UnknownMacro(normalized)),
            };
            let cron = Cron::parse(&expanded.split(' ').collect::<Vec<_>>())?;
            return Ok(Self {
                kind: Kind::Cron(cron),
                expression: word.into(),
            });
        }
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                expression: normalized,
            });
        }
        let cron = Cron::parse(&fields)?;
        if !cron.can_fire() {
            return Err(ScheduleError::Never(normalized));
        }
        Ok(Self {
            kind: Kind::Cron(cron),
            expression: normalized.into(),
        })
    }

    /// Ticks every `period`, at the multiples of `period` since the Unix epoch (so every
    /// process agrees on the ticks), at microsecond resolution.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Interval`] when `period` is shorter than a microsecond or not a whole
    /// number of microseconds.
    pub fn every(period: Duration) -> Result<Self, ScheduleError> {
        let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        if micros == 0 || !period.subsec_nanos().is_multiple_of(1_000) {
            return Err(ScheduleError::Interval(format!("{period:?}")));
        }
        Ok(Self {
            kind: Kind::Every(micros),
            expression: format!("@every {}", format_period(micros)).into(),
        })
    }

    /// The expression as written (spaces normalised, macros in lower case), or
    /// `@every <period>` for an interval.
    #[must_use]
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first tick strictly after `after`, or `None` when there is none before the end of
    /// what `SystemTime` can hold.
    ///
    /// Cron ticks fall on whole UTC minutes. The search jumps by field (month, day, hour,
    /// minute), so a rare schedule (`0 0 29 2 *`: February 29) costs a few hundred steps, not
    /// a walk over every minute of the years in between.
    #[must_use]
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self.kind {
            Kind::Cron(cron) => cron.next_after(after),
            Kind::Every(period) => {
                let period = i128::from(period);
                let now = micros_since_epoch(after);
                let next = (now.div_euclid(period) + 1).checked_mul(period)?;
                from_micros_since_epoch(next)
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// As [`Schedule::cron`].
    fn from_str(expression: &str) -> Result<Self, Self::Err> {
        Self::cron(expression)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl Cron {
    fn parse(fields: &[&str]) -> Result<Self, ScheduleError> {
        let mut bits = [0u64; 5];
        let mut star = [false; 5];
        for ((field, text), (bits, star)) in CronField::ALL
            .into_iter()
            .zip(fields)
            .zip(bits.iter_mut().zip(star.iter_mut()))
        {
            *bits = parse_field(field, text)?;
            *star = text.starts_with('*');
        }
        // 7 is Sunday too.
        let mut weekdays = bits[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        // The bits were set from values within each field's bounds, so these fit.
        Ok(Self {
            minutes: bits[0],
            hours: u32::try_from(bits[1]).unwrap_or(u32::MAX),
            days: u32::try_from(bits[2]).unwrap_or(u32::MAX),
            months: u16::try_from(bits[3]).unwrap_or(u16::MAX),
            weekdays: u8::try_from(weekdays).unwrap_or(u8::MAX),
            days_star: star[2],
            weekdays_star: star[4],
        })
    }

    /// Whether some day can ever match. With both day fields restricted (the OR rule) a
    /// weekday always comes; otherwise the day of month must exist in one of the months
    /// (February counting 29 days).
    fn can_fire(&self) -> bool {
        if !self.days_star && !self.weekdays_star {
            return true;
        }
        (1..=12u32).any(|month| {
            self.months & (1 << month) != 0 && {
                let longest = max_days_in_month(month);
                (1..=longest).any(|day| self.days & (1 << day) != 0)
            }
        })
    }

    fn day_matches(&self, year: i64, month: u32, day: u32) -> bool {
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday(days_from_civil(year, month, day))) != 0;
        if self.days_star || self.weekdays_star {
            by_day && by_weekday
        } else {
            by_day || by_weekday
        }
    }

    fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let start = micros_since_epoch(after).div_euclid(60_000_000) + 1; // whole minutes
        let start = i64::try_from(start).ok()?;
        let (mut year, mut month, mut day) = civil_from_days(start.div_euclid(1440));
        let minute_of_day = u32::try_from(start.rem_euclid(1440)).ok()?;
        let (mut hour, mut minute) = (minute_of_day / 60, minute_of_day % 60);
        // Every combination of month, day and weekday recurs within a 400-year cycle.
        let last_year = year.checked_add(401)?;
        loop {
            if year > last_year {
                return None;
            }
            if self.months & (1 << month) == 0 {
                match next_bit(u64::from(self.months), month + 1, 12) {
                    Some(next) => month = next,
                    None => {
                        year += 1;
                        month = next_bit(u64::from(self.months), 1, 12)?;
                    }
                }
                (day, hour, minute) = (1, 0, 0);
                continue;
            }
            let month_days = days_in_month(year, month);
            if day > month_days || !self.day_matches(year, month, day) {
                // With the weekday unrestricted only the day of month decides: jump to the
                // next allowed one; otherwise try the next day.
                let next_day = if self.weekdays_star {
                    next_bit(u64::from(self.days), day + 1, month_days)
                } else {
                    Some(day + 1).filter(|&next| next <= month_days)
                };
                match next_day {
                    Some(next) => day = next,
                    None => {
                        (month, day) = (month + 1, 1);
                        if month > 12 {
                            (year, month) = (year + 1, 1);
                        }
                    }
                }
                (hour, minute) = (0, 0);
                continue;
            }
            match next_bit(u64::from(self.hours), hour, 23) {
                Some(next) if next == hour => {}
                Some(next) => (hour, minute) = (next, 0),
                None => {
                    (day, hour, minute) = (day + 1, 0, 0);
                    continue;
                }
            }
            match next_bit(self.minutes, minute, 59) {
                Some(next) => minute = next,
                None => {
                    (hour, minute) = (hour + 1, 0);
                    if hour > 23 {
                        (day, hour) = (day + 1, 0);
                    }
                    continue;
                }
            }
            let days = days_from_civil(year, month, day);
            let minutes = i128::from(days) * 1440 + i128::from(hour * 60 + minute);
            return from_micros_since_epoch(minutes * 60_000_000);
        }
    }
}

/// The bits of one field.
fn parse_field(field: CronField, text: &str) -> Result<u64, ScheduleError> {
    let (min, max) = field.bounds();
    let mut bits = 0u64;
    for part in text.split(',') {
        let bad = |problem| ScheduleError::Field {
            field,
            token: part.to_owned(),
            problem,
        };
        let value = |text: &str| parse_value(field, text).map_err(bad);
        if part.is_empty() {
            return Err(bad(FieldProblem::Empty));
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        let stepped = step.is_some();
        let step = match step {
            None => 1,
            Some("") => return Err(bad(FieldProblem::Empty)),
            Some(step) if step.bytes().all(|b| b.is_ascii_digit()) => match step.parse::<u32>() {
                Ok(0) => return Err(bad(FieldProblem::ZeroStep)),
                Ok(step) => step,
                // A step longer than any field: only the first value.
                Err(_) => u32::MAX,
            },
            Some(_) => return Err(bad(FieldProblem::NotANumber)),
        };
        let (first, last) = if range == "*" {
            (min, field.last())
        } else if let Some((first, last)) = range.split_once('-') {
            // A range ending on Sunday by name ends on 7: `FRI-SUN`.
            let sunday_last = field == CronField::DayOfWeek && last.eq_ignore_ascii_case("SUN");
            let (first, last) = (value(first)?, if sunday_last { 7 } else { value(last)? });
            if first > last {
                return Err(bad(FieldProblem::Backwards));
            }
            (first, last)
        } else {
            let first = value(range)?;
            // `a/n`: from `a` to the end of the field, every `n`.
            let last = if stepped {
                field.last().max(first)
            } else {
                first
            };
            (first, last)
        };
        let mut at = first;
        while at <= last && at <= max {
            bits |= 1 << at;
            match at.checked_add(step) {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    Ok(bits)
}

/// One number or name of `field`.
fn parse_value(field: CronField, text: &str) -> Result<u32, FieldProblem> {
    let (min, max) = field.bounds();
    if text.is_empty() {
        return Err(FieldProblem::Empty);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            _ => Err(FieldProblem::OutOfRange { min, max }),
        };
    }
    field
        .names()
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .and_then(|index| u32::try_from(index).ok())
        .map(|index| index + field.first_name_value())
        .ok_or(FieldProblem::NotANumber)
}

/// `30s`, `1500ms`, `2h`: a whole number of one unit, in microseconds.
fn parse_period(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let micros_per_unit: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return None,
    };
    Some(Duration::from_micros(number.checked_mul(micros_per_unit)?))
}

/// The largest unit that divides `micros` exactly.
fn format_period(micros: u64) -> String {
    for (unit, size) in [
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if micros.is_multiple_of(size) {
            return format!("{}{unit}", micros / size);
        }
    }
    format!("{micros}us")
}

/// The lowest set bit of `bits` in `from..=to`.
fn next_bit(bits: u64, from: u32, to: u32) -> Option<u32> {
    if from > to || from >= 64 {
        return None;
    }
    let found = (bits >> from).trailing_zeros().checked_add(from)?;
    (found <= to).then_some(found)
}

/// Microseconds since the Unix epoch (negative before it).
fn micros_since_epoch(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_micros().try_into().unwrap_or(i128::MAX),
        Err(before) => {
            let before: i128 = before.duration().as_nanos().try_into().unwrap_or(i128::MAX);
            // Round towards the past.
            -((before + 999) / 1_000)
        }
    }
}

fn from_micros_since_epoch(micros: i128) -> Option<SystemTime> {
    let magnitude = Duration::from_micros(u64::try_from(micros.unsigned_abs()).ok()?);
    if micros >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

const fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

const fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

const fn max_days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// 0 for Sunday; 1970-01-01 was a Thursday.
fn weekday(days: i64) -> u32 {
    u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A UTC time from its parts.
    fn at(year: i64, month: u32, day: u32, hour: u32, minute: u32) -> SystemTime {
        let minutes =
            i128::from(days_from_civil(year, month, day)) * 1440 + i128::from(hour * 60 + minute);
        from_micros_since_epoch(minutes * 60_000_000).unwrap()
    }

    fn next(expression: &str, after: SystemTime) -> SystemTime {
        Schedule::cron(expression)
            .unwrap()
            .next_after(after)
            .unwrap()
    }

    fn field_error(expression: &str) -> (CronField, String, FieldProblem) {
        match Schedule::cron(expression) {
            Err(ScheduleError::Field {
                field,
                token,
                problem,
            }) => (field, token, problem),
            other => panic!("`{expression}`: expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn civil_dates_round_trip_and_weekdays_are_right() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        assert_eq!(weekday(days_from_civil(2024, 1, 6)), 6, "a Saturday");
        assert_eq!(weekday(days_from_civil(1969, 12, 28)), 0, "a Sunday");
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=days_in_month(y, m)).contains(&d));
        }
    }

    #[test]
    fn every_field_syntax() {
        let t = at(2024, 1, 1, 0, 0); // a Monday
        assert_eq!(next("* * * * *", t), at(2024, 1, 1, 0, 1), "strictly after");
        assert_eq!(
            next("*/15 * * * *", at(2024, 1, 1, 0, 14)),
            at(2024, 1, 1, 0, 15)
        );
        assert_eq!(
            next("5,10,20-22 * * * *", at(2024, 1, 1, 0, 10)),
            at(2024, 1, 1, 0, 20)
        );
        assert_eq!(
            next("10-50/20 * * * *", at(2024, 1, 1, 0, 31)),
            at(2024, 1, 1, 0, 50)
        );
        assert_eq!(
            next("10-50/20 * * * *", at(2024, 1, 1, 0, 50)),
            at(2024, 1, 1, 1, 10)
        );
        assert_eq!(
            next("40/7 * * * *", at(2024, 1, 1, 0, 55)),
            at(2024, 1, 1, 1, 40),
            "a/n"
        );
        assert_eq!(
            next("0 9-17/4 * * *", at(2024, 1, 1, 13, 0)),
            at(2024, 1, 1, 17, 0)
        );
        assert_eq!(
            next("0 0 * JUN-aug *", t),
            at(2024, 6, 1, 0, 0),
            "month names"
        );
        assert_eq!(
            next("0 0 * * sat", t),
            at(2024, 1, 6, 0, 0),
            "weekday names"
        );
        assert_eq!(
            next("0 0 * * FRI-SUN", at(2024, 1, 6, 0, 0)),
            at(2024, 1, 7, 0, 0)
        );
        assert_eq!(next("0 0 * * 7", t), at(2024, 1, 7, 0, 0), "7 is Sunday");
        assert_eq!(next("0 0 * * 0", t), at(2024, 1, 7, 0, 0), "0 is Sunday");
        assert_eq!(
            next("0 0 * * 5-7", at(2024, 1, 6, 12, 0)),
            at(2024, 1, 7, 0, 0)
        );
        assert_eq!(next("59 23 31 12 *", t), at(2024, 12, 31, 23, 59));
    }

    #[test]
    fn macros() {
        let t = at(2024, 5, 15, 10, 30); // a Wednesday
        assert_eq!(next("@hourly", t), at(2024, 5, 15, 11, 0));
        assert_eq!(next("@daily", t), at(2024, 5, 16, 0, 0));
        assert_eq!(next("@midnight", t), at(2024, 5, 16, 0, 0));
        assert_eq!(next("@weekly", t), at(2024, 5, 19, 0, 0));
        assert_eq!(next("@monthly", t), at(2024, 6, 1, 0, 0));
        assert_eq!(next("@yearly", t), at(2025, 1, 1, 0, 0));
        assert_eq!(next("@ANNUALLY", t), at(2025, 1, 1, 0, 0));
        assert_eq!(Schedule::cron(" @Daily ").unwrap().expression(), "@daily");
    }

    #[test]
    fn february_29_and_the_31st() {
        let t = at(2024, 3, 1, 0, 0);
        assert_eq!(next("0 0 29 2 *", t), at(2028, 2, 29, 0, 0));
        // 2100 is not a leap year: from 2096 the next February 29 is in 2104.
        assert_eq!(
            next("0 0 29 2 *", at(2096, 2, 29, 0, 0)),
            at(2104, 2, 29, 0, 0)
        );
        assert_eq!(
            next("0 0 29 2 *", at(2000, 1, 1, 0, 0)),
            at(2000, 2, 29, 0, 0)
        );
        // The 31st skips the months that have 30 days or fewer.
        assert_eq!(
            next("0 0 31 * *", at(2024, 1, 31, 0, 0)),
            at(2024, 3, 31, 0, 0)
        );
        assert_eq!(
            next("0 0 31 * *", at(2024, 3, 31, 0, 0)),
            at(2024, 5, 31, 0, 0)
        );
        assert_eq!(
            next("0 0 30 * *", at(2024, 1, 30, 0, 0)),
            at(2024, 3, 30, 0, 0)
        );
        assert_eq!(next("0 0 31 4,6,7 *", t), at(2024, 7, 31, 0, 0));
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 13th or any Friday.
        let schedule = "0 0 13 * FRI";
        assert_eq!(next(schedule, at(2024, 1, 1, 0, 0)), at(2024, 1, 5, 0, 0));
        assert_eq!(next(schedule, at(2024, 1, 12, 0, 0)), at(2024, 1, 13, 0, 0));
        assert_eq!(next(schedule, at(2024, 1, 13, 0, 0)), at(2024, 1, 19, 0, 0));
        // With one of them `*`, both must match: Fridays only, or the 13th only.
        assert_eq!(
            next("0 0 * * FRI", at(2024, 1, 5, 0, 0)),
            at(2024, 1, 12, 0, 0)
        );
        assert_eq!(
            next("0 0 13 * *", at(2024, 1, 5, 0, 0)),
            at(2024, 1, 13, 0, 0)
        );
        // A field starting with `*` counts as unrestricted (crontab(5)), steps included:
        // odd days that are Mondays.
        assert_eq!(
            next("0 0 */2 * MON", at(2024, 1, 1, 0, 0)),
            at(2024, 1, 15, 0, 0)
        );
    }

    #[test]
    fn seconds_and_times_before_the_epoch() {
        let t = at(2024, 1, 1, 0, 0) + Duration::from_secs(30);
        assert_eq!(next("* * * * *", t), at(2024, 1, 1, 0, 1));
        assert_eq!(
            next("0 0 1 1 *", at(1969, 6, 1, 12, 0)),
            at(1970, 1, 1, 0, 0)
        );
        assert_eq!(next("@daily", at(1900, 2, 28, 1, 0)), at(1900, 3, 1, 0, 0));
    }

    #[test]
    fn intervals_align_on_the_epoch() {
        let every = Schedule::every(Duration::from_secs(10)).unwrap();
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_004_500);
        assert_eq!(
            every.next_after(t),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_010))
        );
        let on_tick = UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        assert_eq!(
            every.next_after(on_tick),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_020)),
            "strictly after"
        );
        for (period, text) in [
            (Duration::from_secs(7200), "@every 2h"),
            (Duration::from_secs(90), "@every 90s"),
            (Duration::from_secs(120), "@every 2m"),
            (Duration::from_millis(1500), "@every 1500ms"),
            (Duration::from_micros(3), "@every 3us"),
        ] {
            let schedule = Schedule::every(period).unwrap();
            assert_eq!(schedule.to_string(), text);
            assert_eq!(Schedule::cron(text).unwrap(), schedule);
        }
        assert!(matches!(
            Schedule::every(Duration::ZERO),
            Err(ScheduleError::Interval(_))
        ));
        assert!(matches!(
            Schedule::every(Duration::from_nanos(1500)),
            Err(ScheduleError::Interval(_))
        ));
        for bad in [
            "@every",
            "@every 0s",
            "@every 5",
            "@every 5d",
            "@every s",
            "@every 1 s",
        ] {
            assert!(
                matches!(Schedule::cron(bad), Err(ScheduleError::Interval(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn invalid_expressions_name_the_field_and_the_token() {
        use CronField::*;
        use FieldProblem::*;
        assert_eq!(
            field_error("60 * * * *"),
            (Minute, "60".into(), OutOfRange { min: 0, max: 59 })
        );
        assert_eq!(
            field_error("* 24 * * *"),
            (Hour, "24".into(), OutOfRange { min: 0, max: 23 })
        );
        assert_eq!(
            field_error("* * 0 * *"),
            (DayOfMonth, "0".into(), OutOfRange { min: 1, max: 31 })
        );
        assert_eq!(
            field_error("* * 32 * *"),
            (DayOfMonth, "32".into(), OutOfRange { min: 1, max: 31 })
        );
        assert_eq!(
            field_error("* * * 13 *"),
            (Month, "13".into(), OutOfRange { min: 1, max: 12 })
        );
        assert_eq!(
            field_error("* * * * 8"),
            (DayOfWeek, "8".into(), OutOfRange { min: 0, max: 7 })
        );
        assert_eq!(
            field_error("* * * JANUARY *"),
            (Month, "JANUARY".into(), NotANumber)
        );
        assert_eq!(
            field_error("* * * * MON-FOO"),
            (DayOfWeek, "MON-FOO".into(), NotANumber)
        );
        assert_eq!(
            field_error("* * * * FRI-MON"),
            (DayOfWeek, "FRI-MON".into(), Backwards)
        );
        assert_eq!(field_error("*/0 * * * *"), (Minute, "*/0".into(), ZeroStep));
        assert_eq!(field_error("1,,2 * * * *"), (Minute, "".into(), Empty));
        assert_eq!(field_error("1- * * * *"), (Minute, "1-".into(), Empty));
        assert_eq!(field_error("*/ * * * *"), (Minute, "*/".into(), Empty));
        assert_eq!(
            field_error("*/x * * * *"),
            (Minute, "*/x".into(), NotANumber)
        );
        assert_eq!(field_error("-5 * * * *"), (Minute, "-5".into(), Empty));
        assert_eq!(field_error("5 JAN * * *"), (Hour, "JAN".into(), NotANumber));
        assert_eq!(
            field_error("99999999999 * * * *"),
            (Minute, "99999999999".into(), OutOfRange { min: 0, max: 59 })
        );
        assert!(matches!(
            Schedule::cron("* * * *"),
            Err(ScheduleError::FieldCount { found: 4, .. })
        ));
        assert!(matches!(
            Schedule::cron(""),
            Err(ScheduleError::FieldCount { found: 0, .. })
        ));
        assert!(matches!(
            Schedule::cron("0 0 * * * *"),
            Err(ScheduleError::FieldCount { found: 6, .. })
        ));
        assert!(matches!(
            Schedule::cron("@reboot"),
            Err(ScheduleError::UnknownMacro(_))
        ));
        assert!(matches!(
            Schedule::cron("@daily 5"),
            Err(ScheduleError::UnknownMacro(_))
        ));
        assert_eq!(
            Schedule::cron("0 0 30 2 *"),
            Err(ScheduleError::Never("0 0 30 2 *".into()))
        );
        assert_eq!(
            Schedule::cron("0 0 31 4,6,9,11 *"),
            Err(ScheduleError::Never("0 0 31 4,6,9,11 *".into()))
        );
        // With the OR rule a weekday always comes.
        assert!(Schedule::cron("0 0 30 2 MON").is_ok());
        assert_eq!(field_error("* 24 * * *").0.to_string(), "hour",);
        assert_eq!(
            Schedule::cron("* * * 13 *").unwrap_err().to_string(),
            "cron month field: `13` is out of range 1-12"
        );
    }

    #[test]
    fn past_the_last_representable_tick_there_is_none() {
        // Ticks are held in microseconds since the epoch (about 584,000 years of them).
        let beyond = UNIX_EPOCH + Duration::from_secs(1 << 45);
        assert_eq!(Schedule::cron("@daily").unwrap().next_after(beyond), None);
        let every = Schedule::every(Duration::from_secs(60)).unwrap();
        assert_eq!(every.next_after(beyond), None);
        let before = UNIX_EPOCH + Duration::from_secs(1 << 43);
        assert!(
            Schedule::cron("0 0 29 2 *")
                .unwrap()
                .next_after(before)
                .is_some()
        );
    }

    #[test]
    fn expressions_are_normalised_and_display_round_trips() {
        let schedule: Schedule = "  0   9 *  * MON-FRI ".parse().unwrap();
        assert_eq!(schedule.to_string(), "0 9 * * MON-FRI");
        assert_eq!(Schedule::cron(&schedule.to_string()).unwrap(), schedule);
    }

    /// One comma-separated part of a field with bounds `min..=max`.
    fn part(min: u32, max: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (1..=max).prop_map(|step| format!("*/{step}")),
            (min..=max).prop_map(|a| a.to_string()),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (min..=max, min..=max, 1..=max).prop_map(|(a, b, n)| format!(
                "{}-{}/{n}",
                a.min(b),
                a.max(b)
            )),
            (min..=max, 1..=max).prop_map(|(a, n)| format!("{a}/{n}")),
        ]
    }

    fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
        prop::collection::vec(part(min, max), 1..=3).prop_map(|parts| parts.join(","))
    }

    fn expression() -> impl Strategy<Value = String> {
        (
            field(0, 59),
            field(0, 23),
            field(1, 31),
            prop_oneof![field(1, 12), Just("JAN-MAR,oct".to_owned())],
            prop_oneof![
                field(0, 7),
                Just("MON-fri".to_owned()),
                Just("sun,SAT".to_owned())
            ],
        )
            .prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}"))
    }

    /// The first matching minute after `after`, found by walking one minute at a time over a
    /// calendar of its own (up to `horizon` minutes); `None` when there is none in that span.
    fn brute_force(cron: &Cron, after: SystemTime, horizon: u32) -> Option<SystemTime> {
        let start = i64::try_from(micros_since_epoch(after).div_euclid(60_000_000) + 1).unwrap();
        let (mut year, mut month, mut day) = civil_from_days(start.div_euclid(1440));
        let mut weekday = weekday(start.div_euclid(1440));
        let mut minute_of_day = u32::try_from(start.rem_euclid(1440)).unwrap();
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let month_length = |y: i64, m: u32| match m {
            2 => 28 + u32::from(leap(y)),
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        for step in 0..horizon {
            let (hour, minute) = (minute_of_day / 60, minute_of_day % 60);
            let dom = cron.days & (1 << day) != 0;
            let dow = cron.weekdays & (1 << weekday) != 0;
            let day_ok = if cron.days_star || cron.weekdays_star {
                dom && dow
            } else {
                dom || dow
            };
            if cron.minutes & (1 << minute) != 0
                && cron.hours & (1 << hour) != 0
                && cron.months & (1 << month) != 0
                && day_ok
            {
                let minutes = i128::from(start) + i128::from(step);
                return from_micros_since_epoch(minutes * 60_000_000);
            }
            minute_of_day += 1;
            if minute_of_day == 1440 {
                minute_of_day = 0;
                weekday = (weekday + 1) % 7;
                day += 1;
                if day > month_length(year, month) {
                    day = 1;
                    month += 1;
                    if month == 13 {
                        month = 1;
                        year += 1;
                    }
                }
            }
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn next_after_is_the_first_matching_minute(
            expression in expression(),
            // 1900 to 2400.
            after in -2_208_988_800i64..13_569_465_600,
        ) {
            let schedule = match Schedule::cron(&expression) {
                Ok(schedule) => schedule,
                Err(ScheduleError::Never(_)) => return Ok(()),
                Err(error) => panic!("`{expression}` did not parse: {error}"),
            };
            let Kind::Cron(cron) = schedule.kind else { unreachable!() };
            let after = from_micros_since_epoch(i128::from(after) * 1_000_000).unwrap();
            let next = schedule.next_after(after).expect("a valid schedule always fires");
            prop_assert!(next > after);
            // A year of minutes, one at a time.
            let horizon = 366 * 1440;
            match brute_force(&cron, after, horizon) {
                Some(found) => prop_assert_eq!(next, found, "`{}` after {:?}", expression, after),
                None => {
                    // Beyond the horizon: next must be past it and be a match itself.
                    let limit = after + Duration::from_secs(u64::from(horizon) * 60);
                    prop_assert!(next >= limit, "`{}`: {:?} was missed", expression, next);
                    let just_before = next - Duration::from_secs(60);
                    prop_assert_eq!(brute_force(&cron, just_before, 1), Some(next));
                }
            }
            prop_assert_eq!(Schedule::cron(&schedule.to_string()).unwrap(), schedule);
        }

        #[test]
        fn intervals_tick_on_multiples_after_the_time(
            period in 1u64..10_000_000_000,
            after in 0u64..4_000_000_000_000_000,
        ) {
            let schedule = Schedule::every(Duration::from_micros(period)).unwrap();
            let next = schedule.next_after(UNIX_EPOCH + Duration::from_micros(after)).unwrap();
            let next = u64::try_from(next.duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap();
            prop_assert_eq!(next % period, 0);
            prop_assert!(next > after && next - after <= period);
        }
    }
}
