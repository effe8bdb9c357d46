//! Units the settings are written in.

use std::str::FromStr;

/// A number of bytes, written as a plain number or with a unit:
/// `64MiB`, `512KiB`, `1GiB`, `1TiB` (powers of 1024) or `500kB`, `20MB`,
/// `1GB` (powers of 1000); units are case-insensitive, a space is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The size in bytes as a `usize` (saturating on 32-bit targets).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected a number of bytes, optionally with a unit: 67108864, 64MiB, 512KiB, 1GiB, 20MB";
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: u64 = number.parse().map_err(|_| expected.to_owned())?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "tib" | "t" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(expected.to_owned()),
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{s} is too large"))
    }
}

impl std::fmt::Display for ByteSize {
    /// Bytes, with the largest binary unit that divides them exactly.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        for (text, bytes) in [
            ("0", 0),
            ("1024", 1024),
            ("64MiB", 64 << 20),
            ("256mib", 256 << 20),
            ("1 GiB", 1 << 30),
            ("512KiB", 512 << 10),
            ("20MB", 20_000_000),
            ("3kB", 3_000),
            ("2g", 2 << 30),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "MiB", "1.5GiB", "-1", "12 parsecs", "99999999999TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
    }
}
