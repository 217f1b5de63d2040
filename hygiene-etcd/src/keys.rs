//! The layout of hygiene's keys in etcd, under a prefix (`hygiene/`):
//!
//! | key | value | etcd lease |
//! |---|---|---|
//! | `pools/<pool>/owner` | the holder (run, who, started, lease duration); its `mod_revision` is the fence | none: stays until released or taken over |
//! | `pools/<pool>/alive` | when the holder last renewed (its clock) | the holder's: etcd deletes it a whole TTL after the last keep-alive |
//! | `pools/<pool>/hosts/<host>` | empty: the hosts the pool has out | none |
//! | `hosts/<host>` | the pool holding the host | none: a host out of rotation stays held when its holder dies |
//! | `journal/<pool>/<fence>/<seq>` | one journal record (JSON) | none |
//!
//! Names are escaped (`%` → `%25`, `/` → `%2F`, control characters as
//! `%XX`), so a name never reaches into another key's range; fences and
//! sequence numbers are zero-padded, so keys sort in journal order.

/// Escapes a pool or host name for one key segment.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' | '/' => out.push_str(&format!("%{:02X}", u32::from(c))),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The name [`escape`] made a segment of; `None` for a segment it could
/// not have made.
pub(crate) fn unescape(segment: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(segment.len());
    let mut it = segment.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = char::from(it.next()?).to_digit(16)?;
            let lo = char::from(it.next()?).to_digit(16)?;
            bytes.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// The keys of one store (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (which ends with `/`).
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Everything of `pool`'s lease: owner, alive, host index.
    pub(crate) fn pool_prefix(&self, pool: &str) -> String {
        format!("{}pools/{}/", self.prefix, escape(pool))
    }

    pub(crate) fn owner(&self, pool: &str) -> String {
        format!("{}owner", self.pool_prefix(pool))
    }

    pub(crate) fn alive(&self, pool: &str) -> String {
        format!("{}alive", self.pool_prefix(pool))
    }

    pub(crate) fn pool_hosts(&self, pool: &str) -> String {
        format!("{}hosts/", self.pool_prefix(pool))
    }

    pub(crate) fn pool_host(&self, pool: &str, host: &str) -> String {
        format!("{}{}", self.pool_hosts(pool), escape(host))
    }

    pub(crate) fn host(&self, host: &str) -> String {
        format!("{}hosts/{}", self.prefix, escape(host))
    }

    /// Every journal record of `pool`.
    pub(crate) fn journal(&self, pool: &str) -> String {
        format!("{}journal/{}/", self.prefix, escape(pool))
    }

    /// The records written under `fence`.
    pub(crate) fn journal_fence(&self, pool: &str, fence: u64) -> String {
        format!("{}{fence:020}/", self.journal(pool))
    }

    pub(crate) fn record(&self, pool: &str, fence: u64, seq: u64) -> String {
        format!("{}{seq:010}", self.journal_fence(pool, fence))
    }

    /// A key for `hygiene validate`'s write check.
    pub(crate) fn probe(&self, id: &str) -> String {
        format!("{}probe/{}", self.prefix, escape(id))
    }
}

/// The end of the range of every key starting with `prefix` (etcd's
/// "prefix end": the prefix with its last byte incremented).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_reach_into_other_keys() {
        let k = Keys::new("hygiene/");
        assert_eq!(k.owner("web"), "hygiene/pools/web/owner");
        assert_eq!(
            k.owner("web/hosts/x"),
            "hygiene/pools/web%2Fhosts%2Fx/owner"
        );
        assert!(!k.owner("web/x").starts_with(&k.pool_prefix("web")));
        assert_eq!(k.host("10.0.0.1"), "hygiene/hosts/10.0.0.1");
        assert_eq!(escape("a%2Fb\n"), "a%252Fb%0A");
        for name in ["web", "a/b", "100%", "i-0abc", "x\u{7f}y", "ünï/cödé"] {
            assert_eq!(unescape(&escape(name)).as_deref(), Some(name));
        }
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%4"), None);
    }

    #[test]
    fn journal_keys_sort_in_order() {
        let k = Keys::new("p/");
        let a = k.record("web", 9, 10);
        let b = k.record("web", 10, 2);
        let c = k.record("web", 10, 11);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(c.starts_with(&k.journal("web")));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
