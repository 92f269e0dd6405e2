//! Opaque page tokens: a backend's tag and its position bytes, hex-encoded to stay ASCII.

use crate::store::{StoreError, StoreResult};

/// A token for `position`, tagged so that another backend's token is recognised as foreign.
pub fn encode(tag: &str, position: &[u8]) -> String {
    let hex: String = position.iter().map(|b| format!("{b:02x}")).collect();
    format!("{tag}.{hex}")
}

/// The position bytes of a token made by [`encode`] with the same tag.
pub fn decode(tag: &str, token: &str) -> StoreResult<Vec<u8>> {
    let invalid =
        || StoreError::InvalidPageToken(format!("not a page token of this backend ({tag})"));
    let hex = token
        .strip_prefix(tag)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(invalid)?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(invalid());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| invalid()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_foreign_or_broken_ones() {
        let token = encode("m1", "tenant/ü-1".as_bytes());
        assert_eq!(decode("m1", &token).unwrap(), "tenant/ü-1".as_bytes());
        for bad in ["", "m1.zz", "m1.abc", "x1.00", "r1.00", "m1.é", "m100"] {
            assert!(decode("m1", bad).is_err(), "{bad:?}");
        }
    }
}
