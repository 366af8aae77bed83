//! Field names as the rulebook sees them: each name is classified once, by its length
//! and first letter, and `Connection` options are read without allocating.

use httparse::Header;

/// How the rulebook treats a field, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// End to end: forwarded unless `Connection` names it.
    Other,
    /// RFC 9110 §7.6.1 hop-by-hop by definition (Keep-Alive, Proxy-Connection, TE,
    /// Trailer).
    HopByHop,
    Connection,
    Upgrade,
    TransferEncoding,
    ContentLength,
    Host,
    Expect,
    Date,
    /// X-Forwarded-For: replaced, or extended for a trusted peer.
    ForwardedFor,
    /// X-Forwarded-Proto and X-Forwarded-Host: ours replace them.
    Forwarded,
    CutoverColor,
}

impl Field {
    /// Whether a `Connection` option naming this field removes it (RFC 9110 §7.6.1).
    /// Framing and routing fields are never removed that way: `Connection:
    /// content-length` must not unframe a message, nor `Connection: host` unroute it.
    pub fn removable_by_name(self) -> bool {
        !matches!(
            self,
            Field::Host | Field::ContentLength | Field::TransferEncoding
        )
    }
}

/// At most one full comparison per field: the length and the first letter (in either
/// case) pick the one name it can be.
pub fn classify(name: &[u8]) -> Field {
    let Some(&first) = name.first() else {
        return Field::Other;
    };
    let is = |known: &[u8]| eq_lowercase(name, known);
    match (name.len(), first | 0x20) {
        (2, b't') if is(b"te") => Field::HopByHop,
        (4, b'h') if is(b"host") => Field::Host,
        (4, b'd') if is(b"date") => Field::Date,
        (6, b'e') if is(b"expect") => Field::Expect,
        (7, b'u') if is(b"upgrade") => Field::Upgrade,
        (7, b't') if is(b"trailer") => Field::HopByHop,
        (10, b'c') if is(b"connection") => Field::Connection,
        (10, b'k') if is(b"keep-alive") => Field::HopByHop,
        (14, b'c') if is(b"content-length") => Field::ContentLength,
        (15, b'x') if is(b"x-forwarded-for") => Field::ForwardedFor,
        (15, b'x') if is(b"x-cutover-color") => Field::CutoverColor,
        (16, b'p') if is(b"proxy-connection") => Field::HopByHop,
        (16, b'x') if is(b"x-forwarded-host") => Field::Forwarded,
        (17, b't') if is(b"transfer-encoding") => Field::TransferEncoding,
        (17, b'x') if is(b"x-forwarded-proto") => Field::Forwarded,
        _ => Field::Other,
    }
}

/// What a message's `Connection` fields say about the connection itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `close` was listed: the connection ends after this message.
    pub close: bool,
    /// `keep-alive` was listed: what keeps an HTTP/1.0 connection open.
    pub keep_alive: bool,
    /// `upgrade` was listed; with an `Upgrade` field this makes an HTTP/1.1 upgrade.
    pub upgrade: bool,
    /// Some option names another field, which must then be removed.
    pub names_fields: bool,
}

impl Options {
    /// Reads one `Connection` value into `self`.
    pub fn read(&mut self, value: &[u8]) {
        // The usual values, without splitting.
        if eq_lowercase(value, b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if eq_lowercase(value, b"close") {
            self.close = true;
            return;
        }
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_fields = true;
            }
        }
    }
}

/// The non-empty members of a comma-separated list, trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The fields (by index) that an option of one of the `connection` fields (a mask)
/// names, among those `removable_by_name`. Every name counts: there is no cap on how
/// many a client may list.
pub fn named_by_connection(fields: &[Header<'_>], connection: u128) -> u128 {
    let mut mask = 0;
    for (i, h) in fields.iter().enumerate() {
        let name = h.name.as_bytes();
        let field = classify(name);
        if field == Field::Connection || !field.removable_by_name() {
            continue;
        }
        let named = fields
            .iter()
            .enumerate()
            .filter(|(c, _)| connection & (1 << c) != 0)
            .any(|(_, c)| tokens(c.value).any(|t| t.eq_ignore_ascii_case(name)));
        if named {
            mask |= 1 << i;
        }
    }
    mask
}

/// The name has an underscore: a backend that folds `_` into `-` would read
/// `X_Forwarded_For` as a field cutover sets.
pub fn has_underscore(name: &[u8]) -> bool {
    name.contains(&b'_')
}

/// `bytes` equals `lower` (lowercase letters and `-`) in any case, eight bytes at a
/// time. Setting bit 5 lowercases a letter; no byte that can occur in a field name or
/// value (httparse refuses CR and LF in either) becomes a letter or `-` that way unless
/// it already is one in either case.
pub fn eq_lowercase(bytes: &[u8], lower: &[u8]) -> bool {
    if bytes.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (bytes.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut a).zip(&mut b) {
        let x = u64::from_ne_bytes(<[u8; 8]>::try_from(x).unwrap_or_default());
        let y = u64::from_ne_bytes(<[u8; 8]>::try_from(y).unwrap_or_default());
        if x | 0x2020_2020_2020_2020 != y {
            return false;
        }
    }
    (a.remainder().iter().zip(b.remainder())).all(|(x, y)| x | 0x20 == *y)
}

/// RFC 9110 §8.6: `1*DIGIT`, one value. A list of values in one field is refused on
/// every path (RFC 9110 lets a recipient merge a list of equal values, but a next hop
/// that reads a list as "no length" would take the body for a second message); equal
/// values in separate fields are merged by the callers.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// The bytes of a field line written canonically: `name: value\r\n`.
pub fn line_len(h: &Header<'_>) -> usize {
    h.name.len() + 2 + h.value.len() + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_must_be_one_run_of_digits() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b" 007 "), Some(7));
        for bad in [
            &b""[..],
            b"42, 42",
            b"-1",
            b"4 2",
            b"+4",
            b"42, 43",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn field_names_match_in_any_case_and_only_exactly() {
        assert_eq!(classify(b"Content-Length"), Field::ContentLength);
        assert_eq!(classify(b"X-FORWARDED-FOR"), Field::ForwardedFor);
        assert_eq!(classify(b"x-cutover-color"), Field::CutoverColor);
        assert_eq!(classify(b"Content-Lengti"), Field::Other);
        assert_eq!(classify(b"content_length"), Field::Other);
        assert_eq!(classify(b"Hos"), Field::Other);
        assert!(eq_lowercase(b"KEEP-alive", b"keep-alive"));
        assert!(!eq_lowercase(b"keep_alive", b"keep-alive"));
        assert!(!eq_lowercase(b"keep-alivf", b"keep-alive"));
    }

    #[test]
    fn every_field_a_connection_option_names_is_found_however_many() {
        let names: Vec<String> = (0..12).map(|i| format!("x-{i}")).collect();
        let list = names.join(", ");
        let mut fields = vec![Header {
            name: "Connection",
            value: list.as_bytes(),
        }];
        for n in &names {
            fields.push(Header {
                name: n,
                value: b"1",
            });
        }
        fields.push(Header {
            name: "Host",
            value: b"a",
        });
        let mask = named_by_connection(&fields, 1);
        assert_eq!(mask, ((1u128 << 13) - 1) & !1);
    }
}
