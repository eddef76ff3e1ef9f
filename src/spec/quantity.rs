//! Quantities as people write them: cpu (`0.5`, `500m`), memory (`256Mi`, `1G`, `1024`) and
//! durations (`30s`, `1h30m`), read into integers (millicores, bytes, milliseconds).
//!
//! Everything here is exact integer arithmetic on the text: no floats, so every machine reads a
//! quantity the same way. These functions know nothing of files, lines or fields; their `Err` is
//! a lowercase reason without the value (the caller names the value and where it was).

/// Parses a cpu amount into millicores: `"0.5"` → 500, `"500m"` → 500, `"2"` → 2000.
///
/// Cores may have up to three decimals (a millicore is the finest unit); millicores are whole.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    const HINT: &str = "write cores (0.5) or millicores (500m)";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty, {HINT}"));
    }
    if t.starts_with('-') {
        return Err(format!("cpu cannot be negative, {HINT}"));
    }
    if let Some(millis) = t.strip_suffix('m') {
        if !is_digits(millis) {
            return Err(format!("millicores are a whole number, {HINT}"));
        }
        return millis.parse::<u64>().map_err(|_| "too large".to_owned());
    }
    let (whole, frac) = split_decimal(t).ok_or_else(|| format!("not a number, {HINT}"))?;
    let frac = frac.trim_end_matches('0');
    if frac.len() > 3 {
        return Err(format!("finer than a millicore (0.001), {HINT}"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| "too large".to_owned())?
    };
    // Pad the fraction to exactly three digits: ".5" is 500 millicores.
    let frac_millis: u64 = format!("{frac:0<3}")
        .parse()
        .expect("three ascii digits parse");
    whole
        .checked_mul(1000)
        .and_then(|m| m.checked_add(frac_millis))
        .ok_or_else(|| "too large".to_owned())
}

/// Parses a memory size into bytes: `"256Mi"`, `"1G"`, `"512M"`, `"1Gi"`, `"64k"`, `"64Ki"`,
/// `"1024"` (bytes). A trailing `B` is allowed (`512MiB`). Decimals are allowed when the result
/// is a whole number of bytes (`1.5Gi`), rejected otherwise (`0.5`).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    const HINT: &str = "write bytes (1024) or a size with a unit (256Mi, 1G)";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty, {HINT}"));
    }
    if t.starts_with('-') {
        return Err(format!("memory cannot be negative, {HINT}"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let (whole, frac) = split_decimal(number).ok_or_else(|| format!("not a number, {HINT}"))?;
    let multiplier = unit_multiplier(unit)?;

    // value = digits / 10^frac.len() * multiplier, computed exactly in u128.
    let frac = frac.trim_end_matches('0');
    let too_large = || format!("too large, at most {} bytes", u64::MAX);
    let all_digits = format!("{whole}{frac}");
    let significant = all_digits.trim_start_matches('0');
    let digits: u128 = if significant.is_empty() {
        0
    } else {
        // Only fails past 38 digits.
        significant.parse().map_err(|_| too_large())?
    };
    let scale = 10u128
        .checked_pow(frac.len() as u32)
        .ok_or_else(too_large)?;
    let scaled = digits
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    if scaled % scale != 0 {
        return Err(format!("not a whole number of bytes, {HINT}"));
    }
    u64::try_from(scaled / scale).map_err(|_| too_large())
}

/// The bytes in one `unit`: decimal (`k`, `M`, `G`, …) or binary (`Ki`, `Mi`, `Gi`, …).
fn unit_multiplier(unit: &str) -> Result<u64, String> {
    let bare = unit.strip_suffix('B').unwrap_or(unit);
    Ok(match bare {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        // A lowercase `m` is milli in Kubernetes quantities: never what is meant for memory.
        "m" => {
            return Err(
                "\"m\" is ambiguous for memory, write Mi (mebibytes) or M (megabytes)".to_owned(),
            );
        }
        other => {
            return Err(format!(
                "unknown unit {other:?}, use k, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024)"
            ));
        }
    })
}

/// Parses a duration into milliseconds: `"30s"`, `"1m"`, `"500ms"`, `"1h30m"`, `"1h 30m"`.
/// A bare number has no unit and is rejected; so is a part of a millisecond.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    const HINT: &str = "write a number with a unit (ms, s, m, h, d), like 500ms, 30s or 1h30m";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty, {HINT}"));
    }
    if t.starts_with('-') {
        return Err(format!("a duration cannot be negative, {HINT}"));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        let what = match e {
            humantime::DurationError::InvalidCharacter(i) => {
                format!(
                    "unexpected {:?}",
                    t.get(i..).and_then(|r| r.chars().next()).unwrap_or(' ')
                )
            }
            humantime::DurationError::NumberExpected(_) => "a number is missing".to_owned(),
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                "no unit".to_owned()
            }
            humantime::DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            humantime::DurationError::NumberOverflow => "too long".to_owned(),
            humantime::DurationError::Empty => "empty".to_owned(),
        };
        format!("{what}, {HINT}")
    })?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("not a whole number of milliseconds, {HINT}"));
    }
    u64::try_from(d.as_millis()).map_err(|_| "too long".to_owned())
}

/// `"12.5"` → `("12", "5")`, `"7"` → `("7", "")`, `".5"` → `("", "5")`; None unless the text is
/// ASCII digits with at most one dot and at least one digit.
fn split_decimal(t: &str) -> Option<(&str, &str)> {
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let ok = (is_digits(whole) || whole.is_empty())
        && (is_digits(frac) || frac.is_empty())
        && !(whole.is_empty() && frac.is_empty());
    ok.then_some((whole, frac))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `Resources` arithmetic, saturating: a sum never wraps (a node that ignores its capacity on
/// purpose counts `u64::MAX / 4`), and a difference stops at zero (what is free when more is
/// allocated than offered is nothing, not a wrapped huge number).
impl std::ops::Add for super::Resources {
    type Output = super::Resources;

    fn add(self, other: super::Resources) -> super::Resources {
        super::Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

impl std::ops::AddAssign for super::Resources {
    fn add_assign(&mut self, other: super::Resources) {
        *self = *self + other;
    }
}

impl std::ops::Sub for super::Resources {
    type Output = super::Resources;

    fn sub(self, other: super::Resources) -> super::Resources {
        super::Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }
}

impl std::ops::SubAssign for super::Resources {
    fn sub_assign(&mut self, other: super::Resources) {
        *self = *self - other;
    }
}

impl std::iter::Sum for super::Resources {
    fn sum<I: Iterator<Item = super::Resources>>(iter: I) -> super::Resources {
        iter.fold(super::Resources::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_reads_cores_and_millicores() {
        let table = [
            ("0.5", 500),
            ("500m", 500),
            ("2", 2000),
            ("0", 0),
            (".25", 250),
            ("1.", 1000),
            ("0.001", 1),
            ("1.500", 1500),
            (" 3 ", 3000),
            ("0m", 0),
            ("18446744073709551", 18_446_744_073_709_551_000),
        ];
        for (text, millis) in table {
            assert_eq!(parse_cpu(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn cpu_rejects_what_is_not_a_whole_number_of_millicores() {
        for text in [
            "",
            "-0.5",
            "-1",
            "abc",
            "0.0005",
            "1.5m",
            "m",
            "1e3",
            "0x10",
            "1..2",
            ".",
            "99999999999999999999",
            "2 cores",
        ] {
            let err = parse_cpu(text).expect_err(text);
            assert!(
                !err.is_empty() && err == err.to_lowercase() && !err.ends_with('.'),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn memory_reads_bytes_and_decimal_and_binary_units() {
        let table = [
            ("1024", 1024),
            ("0", 0),
            ("64k", 64_000),
            ("64K", 64_000),
            ("64Ki", 65_536),
            ("512M", 512_000_000),
            ("256Mi", 268_435_456),
            ("1G", 1_000_000_000),
            ("1Gi", 1_073_741_824),
            ("1.5Gi", 1_610_612_736),
            ("1.5k", 1500),
            ("2Ti", 2 << 40),
            ("512MiB", 512 << 20),
            ("1GB", 1_000_000_000),
            ("100B", 100),
            ("256 Mi", 268_435_456),
            ("15Ei", 15 << 60),
            ("18446744073709551615", u64::MAX),
            ("0.5Ki", 512),
            ("00012", 12),
        ];
        for (text, bytes) in table {
            assert_eq!(parse_memory(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn memory_rejects_negatives_overflow_fractions_of_bytes_and_unknown_units() {
        for text in [
            "",
            "-1",
            "-256Mi",
            "0.5",
            "1.0001k",
            "16Ei",
            "18446744073709551616",
            "99999999999999999999999999999999999999999",
            "256m",
            "256mi",
            "1Q",
            "Mi",
            "1.2.3",
            "abc",
            "1e9",
        ] {
            let err = parse_memory(text).expect_err(text);
            assert!(!err.is_empty() && !err.ends_with('.'), "{text}: {err}");
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        let table = [
            ("30s", 30_000),
            ("1m", 60_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("0s", 0),
            ("2000us", 2),
        ];
        for (text, ms) in table {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn durations_need_a_unit_and_whole_milliseconds() {
        for text in [
            "",
            "10",
            "-5s",
            "ten seconds",
            "1500us",
            "5 parsecs",
            "99999999999999999999999h",
        ] {
            let err = parse_duration_ms(text).expect_err(text);
            assert!(!err.is_empty() && !err.ends_with('.'), "{text}: {err}");
        }
    }

    #[test]
    fn resources_add_and_subtract_without_wrapping() {
        use super::super::Resources;
        let r = |cpu_millis, memory_bytes| Resources {
            cpu_millis,
            memory_bytes,
        };
        assert_eq!(r(1, 2) + r(3, 4), r(4, 6));
        assert_eq!(r(u64::MAX, 1) + r(1, 1), r(u64::MAX, 2));
        assert_eq!(r(5, 5) - r(3, 7), r(2, 0));
        let mut a = r(1, 1);
        a += r(2, 2);
        a -= r(1, 5);
        assert_eq!(a, r(2, 0));
        assert_eq!([r(1, 2), r(3, 4)].into_iter().sum::<Resources>(), r(4, 6));
    }
}
