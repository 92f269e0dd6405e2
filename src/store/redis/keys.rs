//! The Redis key layout: four keys per session under one hash tag, and their escaping.
//!
//! `{prefix}{<id>}:meta`  hash: version, created, updated, expire (ms), system (JSON array)
//! `{prefix}{<id>}:msgs`  list: one JSON element per message, in seq order
//! `{prefix}{<id>}:reqs`  list: the last 64 idempotent appends ("request_id\noutcome")
//! `{prefix}{<id>}:state` hash: one field per top-level state key, the value as JSON
//!
//! `{prefix}{rec:<stream>:<YYYY-MM-DD>}` sorted set: one day of learning data or of one
//! user's security logs (see [`record_key`]).
//!
//! The id sits between `{` and `}`, so all four keys hash to one Cluster slot and every
//! script touches one slot. `%`, `{` and `}` in an id are percent-encoded so the tag
//! always ends where the id ends.

/// The four keys of one session, in the order the scripts expect them.
pub fn session_keys(prefix: &str, id: &str) -> [String; 4] {
    let tag = format!("{prefix}{{{}}}", encode_id(id));
    [
        format!("{tag}:meta"),
        format!("{tag}:msgs"),
        format!("{tag}:reqs"),
        format!("{tag}:state"),
    ]
}

/// The key of one day of a record stream: a sorted set whose members are
/// `<id>|<expire ms>|<record JSON>`, all with score 0 so they sort by id, which sorts by
/// time. The whole name is the hash tag, so each day's key has its own Cluster slot.
pub fn record_key(prefix: &str, stream: &str, day: &str) -> String {
    format!("{prefix}{{rec:{}:{day}}}", encode_id(stream))
}

/// The SCAN pattern that matches every record key.
pub fn record_pattern(prefix: &str) -> String {
    format!("{}{{rec:*}}", escape_glob(prefix))
}

/// The stream name of a record key found by SCAN, if it is one of ours.
pub fn stream_of_record_key(prefix: &str, key: &str) -> Option<String> {
    let (stream, _day) = key
        .strip_prefix(prefix)?
        .strip_prefix("{rec:")?
        .strip_suffix('}')?
        .rsplit_once(':')?;
    decode_id(stream)
}

/// The SCAN pattern that matches the meta key of every session whose id starts with
/// `id_prefix`.
pub fn meta_pattern(prefix: &str, id_prefix: &str) -> String {
    format!(
        "{}{{{}*}}:meta",
        escape_glob(prefix),
        escape_glob(&encode_id(id_prefix))
    )
}

/// The session id of a meta key found by SCAN, if it is one of ours.
pub fn id_of_meta_key(prefix: &str, key: &str) -> Option<String> {
    let encoded = key
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix("}:meta")?;
    decode_id(encoded)
}

fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

fn decode_id(encoded: &str) -> Option<String> {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at..at + 3)?;
        out.push(match code {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_whatever_the_id() {
        for id in ["plain", "with{brace}", "}starts", "50%", "ü-会话"] {
            let keys = session_keys("csai:", id);
            let tags: Vec<&str> = keys
                .iter()
                .map(|k| {
                    let open = k.find('{').expect("tag opens");
                    let close = k[open..].find('}').expect("tag closes") + open;
                    &k[open + 1..close]
                })
                .collect();
            assert!(
                tags.iter().all(|t| *t == tags[0] && !t.is_empty()),
                "{id}: {keys:?}"
            );
            assert_eq!(id_of_meta_key("csai:", &keys[0]).as_deref(), Some(id));
        }
    }

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(meta_pattern("csai:", "a*b"), r"csai:{a\*b*}:meta");
        assert_eq!(meta_pattern("csai:", "t{1}"), "csai:{t%7B1%7D*}:meta");
        assert_eq!(id_of_meta_key("csai:", "other:{x}:meta"), None);
        assert_eq!(id_of_meta_key("csai:", "csai:{bad%zz}:meta"), None);
    }
}
