//! A pod's name and UID, kept small: the pod index holds one of each per pod of
//! every DaemonSet (105,021 pods on 5,001 nodes), and each reconcile copies a
//! DaemonSet's pods.
//!
//! A UID that is a UUID in its canonical form (what kube-apiserver assigns) is
//! kept as its 16 bytes instead of 36 characters on the heap; any other UID is
//! kept as text. A DaemonSet pod's name is its DaemonSet's name, a dash and five
//! random characters: the part up to the last dash (the stem) is the same for
//! every pod of the DaemonSet, so the pod index stores it once, and the short
//! part after it lives inside the name itself. Both compare, order, print and
//! serialize as the text they stand for.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A pod's `metadata.uid`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PodUid(Uid);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Uid {
    Uuid([u8; 16]),
    Text(Arc<str>),
}

/// Characters of a UUID in its canonical form.
const UUID_LEN: usize = 36;
/// Where a canonical UUID has its dashes.
const DASHES: [usize; 4] = [8, 13, 18, 23];

impl PodUid {
    /// The UID as text, written into `buf` when it is kept as bytes.
    pub fn as_str<'a>(&'a self, buf: &'a mut [u8; UUID_LEN]) -> &'a str {
        match &self.0 {
            Uid::Text(s) => s,
            Uid::Uuid(bytes) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut digits = bytes.iter().flat_map(|b| [b >> 4, b & 0x0f]);
                for (i, slot) in buf.iter_mut().enumerate() {
                    *slot = if DASHES.contains(&i) {
                        b'-'
                    } else {
                        digits.next().map_or(b'0', |d| HEX[usize::from(d)])
                    };
                }
                // Only ASCII hex digits and dashes were written.
                std::str::from_utf8(buf).unwrap_or_default()
            }
        }
    }

    fn parse_uuid(s: &str) -> Option<[u8; 16]> {
        let b = s.as_bytes();
        if b.len() != UUID_LEN {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if DASHES.contains(&i) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            // Lowercase only, so that printing gives back the same text.
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            let byte = &mut out[nibbles / 2];
            *byte = if nibbles.is_multiple_of(2) {
                d << 4
            } else {
                *byte | d
            };
            nibbles += 1;
        }
        Some(out)
    }
}

impl From<&str> for PodUid {
    fn from(s: &str) -> Self {
        PodUid(match Self::parse_uuid(s) {
            Some(b) => Uid::Uuid(b),
            None => Uid::Text(Arc::from(s)),
        })
    }
}

impl From<String> for PodUid {
    fn from(s: String) -> Self {
        PodUid::from(s.as_str())
    }
}

impl PartialEq<str> for PodUid {
    fn eq(&self, other: &str) -> bool {
        match &self.0 {
            Uid::Text(s) => **s == *other,
            Uid::Uuid(b) => Self::parse_uuid(other).is_some_and(|o| o == *b),
        }
    }
}

/// Ordered as the text: a canonical UUID's bytes order as its lowercase hex.
impl Ord for PodUid {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            (Uid::Uuid(a), Uid::Uuid(b)) => a.cmp(b),
            (Uid::Text(a), Uid::Text(b)) => a.cmp(b),
            _ => {
                let (mut x, mut y) = ([0u8; UUID_LEN], [0u8; UUID_LEN]);
                self.as_str(&mut x).cmp(other.as_str(&mut y))
            }
        }
    }
}

impl PartialOrd for PodUid {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; UUID_LEN];
        f.write_str(self.as_str(&mut buf))
    }
}

impl fmt::Debug for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for PodUid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; UUID_LEN];
        s.serialize_str(self.as_str(&mut buf))
    }
}

impl<'de> Deserialize<'de> for PodUid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PodUid::from(String::deserialize(d)?))
    }
}

/// The longest part after the last dash kept inside the name.
const TAIL_MAX: usize = 7;

/// A pod's `metadata.name`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PodName {
    /// Up to and with the last dash, or the whole name when the part after it is
    /// longer than [`TAIL_MAX`].
    stem: Arc<str>,
    tail: [u8; TAIL_MAX],
    tail_len: u8,
}

impl PodName {
    /// The part shared by the pods of one DaemonSet.
    pub fn stem(&self) -> &Arc<str> {
        &self.stem
    }

    /// The same name with `stem` (equal text, say a shared copy) as its stem.
    #[must_use]
    pub fn with_stem(self, stem: Arc<str>) -> Self {
        debug_assert_eq!(*stem, *self.stem);
        PodName { stem, ..self }
    }

    fn tail(&self) -> &str {
        // The tail is a whole suffix of a `str` cut after an ASCII dash.
        std::str::from_utf8(&self.tail[..usize::from(self.tail_len)]).unwrap_or_default()
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.stem.bytes().chain(self.tail().bytes())
    }
}

impl From<&str> for PodName {
    fn from(s: &str) -> Self {
        let cut = s.rfind('-').map_or(s.len(), |i| i + 1);
        let tail = &s[cut..];
        if tail.len() > TAIL_MAX {
            return PodName {
                stem: Arc::from(s),
                tail: [0; TAIL_MAX],
                tail_len: 0,
            };
        }
        let mut buf = [0u8; TAIL_MAX];
        buf[..tail.len()].copy_from_slice(tail.as_bytes());
        PodName {
            stem: Arc::from(&s[..cut]),
            tail: buf,
            // At most TAIL_MAX.
            tail_len: u8::try_from(tail.len()).unwrap_or(0),
        }
    }
}

impl From<String> for PodName {
    fn from(s: String) -> Self {
        PodName::from(s.as_str())
    }
}

impl PartialEq<str> for PodName {
    fn eq(&self, other: &str) -> bool {
        other
            .strip_prefix(&*self.stem)
            .is_some_and(|rest| rest == self.tail())
    }
}

/// Ordered as the text.
impl Ord for PodName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl PartialOrd for PodName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stem)?;
        f.write_str(self.tail())
    }
}

impl fmt::Debug for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for PodName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PodName::from(String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0f8e4a2c-9b1d-4e6f-a3c5-7d2b1e0f9a84";

    /// Sorted, the values made of `texts` print in the texts' sorted order.
    fn assert_orders_as_text<'a, T: Ord + fmt::Display + From<&'a str>>(texts: &mut [&'a str]) {
        let mut values: Vec<T> = texts.iter().map(|t| T::from(t)).collect();
        texts.sort_unstable();
        values.sort();
        let printed: Vec<String> = values.iter().map(ToString::to_string).collect();
        assert_eq!(printed, texts);
    }

    #[test]
    fn a_canonical_uuid_is_kept_as_bytes_and_prints_back_the_same() {
        let uid = PodUid::from(UUID);
        assert!(matches!(uid.0, Uid::Uuid(_)));
        assert_eq!(uid.to_string(), UUID);
        assert!(uid == *UUID);
        assert!(uid != *"0f8e4a2c-9b1d-4e6f-a3c5-7d2b1e0f9a85");
        assert_eq!(serde_json::to_string(&uid).unwrap(), format!("\"{UUID}\""));
        let back: PodUid = serde_json::from_str(&format!("\"{UUID}\"")).unwrap();
        assert_eq!(back, uid);
    }

    #[test]
    fn any_other_uid_is_kept_as_text() {
        for text in [
            "u1",
            "",
            "0F8E4A2C-9B1D-4E6F-A3C5-7D2B1E0F9A84",
            "0f8e4a2c99b1d-4e6f-a3c5-7d2b1e0f9a84",
            "0f8e4a2c-9b1d-4e6f-a3c5-7d2b1e0f9a8g",
            "0f8e4a2c-9b1d-4e6f-a3c5-7d2b1e0f9a844",
        ] {
            let uid = PodUid::from(text);
            assert!(matches!(uid.0, Uid::Text(_)), "{text}");
            assert_eq!(uid.to_string(), text);
            assert!(uid == *text);
        }
    }

    #[test]
    fn uids_order_as_their_text_whichever_way_they_are_kept() {
        let mut texts = vec![
            UUID,
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "00000000-0000-0000-0000-000000000000",
            "0f8e4a2c-9b1d-4e6f-a3c5-7d2b1e0f9a8",
            "0f8e4a2c-zzzz",
            "a",
            "0",
        ];
        assert_orders_as_text::<PodUid>(&mut texts);
    }

    #[test]
    fn a_daemonset_pod_name_splits_at_its_last_dash() {
        let name = PodName::from("fluent-bit-x7k2p");
        assert_eq!(&**name.stem(), "fluent-bit-");
        assert_eq!(name.tail(), "x7k2p");
        assert_eq!(name.to_string(), "fluent-bit-x7k2p");
        assert!(name == *"fluent-bit-x7k2p");
        assert!(name != *"fluent-bit-x7k2");
        assert!(name != *"fluent-bit-");
        assert_eq!(
            serde_json::to_string(&name).unwrap(),
            "\"fluent-bit-x7k2p\""
        );
    }

    #[test]
    fn names_without_a_short_part_after_a_dash_are_kept_whole() {
        for text in ["agent", "agent-abcdefgh", "", "agent-", "ünïcode-ä"] {
            let name = PodName::from(text);
            assert_eq!(name.to_string(), text);
            assert!(name == *text);
        }
        assert_eq!(&**PodName::from("agent-abcdefgh").stem(), "agent-abcdefgh");
    }

    #[test]
    fn names_order_as_their_text() {
        let mut texts = vec!["a-b", "a-", "a", "ab-c", "a-bc", "a-b-c", "b", "a-abcdefgh"];
        assert_orders_as_text::<PodName>(&mut texts);
    }

    #[test]
    fn a_shared_stem_changes_nothing_but_where_the_stem_lives() {
        let shared: Arc<str> = Arc::from("agent-");
        let name = PodName::from("agent-q2w3e").with_stem(Arc::clone(&shared));
        assert!(Arc::ptr_eq(name.stem(), &shared));
        assert_eq!(name, PodName::from("agent-q2w3e"));
    }

    #[test]
    fn both_stay_small() {
        assert_eq!(std::mem::size_of::<PodUid>(), 24);
        assert_eq!(std::mem::size_of::<PodName>(), 24);
    }
}
