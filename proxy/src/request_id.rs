//! Request IDs: what `X-Request-Id` carries when the client sent none (or the entrypoint does not
//! trust the client's), and what Gantry's own error answers carry.

use bytes::Bytes;
use http::HeaderValue;

/// 128 random bits as 32 lowercase hex digits.
///
/// Made in one allocation that clones share (`Bytes::from_owner`): the ID goes to the backend
/// and back to the client, and a `Vec`-backed value would allocate again on its first clone.
pub(crate) fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    hex(&mut buf, &fastrand::u128(..).to_le_bytes());
    HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub(crate) fn hex(out: &mut [u8], bytes: &[u8]) {
    static PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
            i += 1;
        }
        t
    };
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
