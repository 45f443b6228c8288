//! `Lsn`: a WAL position, printed and parsed as PostgreSQL does (`16/B374D848`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};

use crate::PgError;

/// OID of the `pg_lsn` type.
const PG_LSN_OID: u32 = 3220;

/// A WAL location (byte position in the WAL stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes from `earlier` to `self`; 0 when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Sub for Lsn {
    /// Signed, so a replica ahead of a stale primary reading shows as negative, not as a wrap.
    type Output = i128;
    fn sub(self, rhs: Lsn) -> i128 {
        i128::from(self.0) - i128::from(rhs.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = PgError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PgError::InvalidLsn(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl sqlx::Type<Postgres> for Lsn {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(PG_LSN_OID))
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Lsn {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
                Ok(Lsn(u64::from_be_bytes(bytes)))
            }
            PgValueFormat::Text => Ok(value.as_str()?.parse()?),
        }
    }
}

impl sqlx::Encode<'_, Postgres> for Lsn {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_print_subtract() {
        let a: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(a.0, 0x16_B374_D848);
        assert_eq!(a.to_string(), "16/B374D848");
        let b: Lsn = "16/B3740000".parse().unwrap();
        assert_eq!(a - b, 0xD848);
        assert_eq!(b - a, -0xD848);
        assert_eq!(b.bytes_since(a), 0);
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        for bad in ["", "16", "/1", "G/1", "1/123456789", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }
}
