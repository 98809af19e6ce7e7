//! Byte sizes as users write them: `65536`, `64KiB`, `100MiB`, `1GiB`, `10MB`.

use serde::Deserialize;

/// A size as written in TOML or JSON: a number of bytes, or text with a unit.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FileSize {
    Bytes(i64),
    Text(String),
}

impl FileSize {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            FileSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
            FileSize::Text(t) => parse(t),
        }
    }
}

pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. \"64KiB\" or \"100MiB\""))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("64KiB"), Ok(65536));
        assert_eq!(parse("100MiB"), Ok(100 << 20));
        assert_eq!(parse("1 GiB"), Ok(1 << 30));
        assert_eq!(parse("10MB"), Ok(10_000_000));
        assert!(parse("10XB").unwrap_err().contains("unknown unit"));
        assert!(parse("lots").is_err());
        assert!(FileSize::Bytes(-1).bytes().is_err());
    }
}
