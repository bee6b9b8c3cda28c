//! Byte sizes as users type them: `65536`, `64KiB`, `4MiB`, `1GiB`, `10kB`.
//!
//! Binary units (KiB, MiB, GiB) are powers of 1024; decimal ones (kB, MB, GB) powers of
//! 1000; a bare `K`, `M`, `G` is read as binary, as most tools do.

use std::fmt;
use std::str::FromStr;

/// A size people wrote that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error("`{text}` is not a size: expected a number of bytes, optionally with a unit (e.g. 65536, 64KiB, 4MiB)")]
    NotASize { text: String },
    #[error("`{text}` is too large to be a size")]
    TooLarge { text: String },
    #[error("`{text}` has an unknown unit `{unit}`: use B, KiB, MiB or GiB (or kB, MB, GB)")]
    UnknownUnit { text: String, unit: String },
}

/// A size in bytes, parsed from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let too_large = || ByteSizeError::TooLarge {
            text: text.to_string(),
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        if digits.is_empty() {
            return Err(ByteSizeError::NotASize {
                text: text.to_string(),
            });
        }
        let number: u64 = digits.parse().map_err(|_| too_large())?;
        let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => Self::KIB,
            "m" | "mib" => Self::MIB,
            "g" | "gib" => Self::GIB,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(ByteSizeError::UnknownUnit {
                    text: text.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(too_large)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        if bytes >= Self::GIB && bytes.is_multiple_of(Self::GIB) {
            write!(f, "{}GiB", bytes / Self::GIB)
        } else if bytes >= Self::MIB && bytes.is_multiple_of(Self::MIB) {
            write!(f, "{}MiB", bytes / Self::MIB)
        } else if bytes >= Self::KIB && bytes.is_multiple_of(Self::KIB) {
            write!(f, "{}KiB", bytes / Self::KIB)
        } else {
            write!(f, "{bytes}B")
        }
    }
}

/// Human-readable rendering for progress lines (`12.5 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= ByteSize::GIB as f64 {
        format!("{:.2} GiB", b / ByteSize::GIB as f64)
    } else if b >= ByteSize::MIB as f64 {
        format!("{:.1} MiB", b / ByteSize::MIB as f64)
    } else if b >= ByteSize::KIB as f64 {
        format!("{:.1} KiB", b / ByteSize::KIB as f64)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_units() {
        assert_eq!("65536".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("4MiB".parse::<ByteSize>().unwrap(), ByteSize(4 << 20));
        assert_eq!("4mib".parse::<ByteSize>().unwrap(), ByteSize(4 << 20));
        assert_eq!("1G".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
        assert_eq!("10kB".parse::<ByteSize>().unwrap(), ByteSize(10_000));
        assert_eq!("7 B".parse::<ByteSize>().unwrap(), ByteSize(7));
    }

    #[test]
    fn rejects_garbage() {
        assert!("".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(
            "4XB".parse::<ByteSize>().unwrap_err().to_string(),
            "`4XB` has an unknown unit `xb`: use B, KiB, MiB or GiB (or kB, MB, GB)"
        );
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("99999999999999999999".parse::<ByteSize>().is_err());
        assert!("99999999999GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_round_units() {
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
