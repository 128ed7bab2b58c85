//! Does a client's request name the app's state endpoint?
//!
//! The state endpoint is out of a client's reach by construction: the sidecar calls it on a
//! separate address (`--state-addr`, loopback of the pod), never on the port it forwards client
//! requests to. This check is the second layer, for apps that also answer the state path on
//! their client port: it refuses the spellings that web frameworks treat as the same route —
//! any letter case, percent-encoding, repeated or trailing slashes, dot segments, and `;params`
//! (Express and ASP.NET match case-insensitively and ignore a trailing slash; Tomcat strips path
//! parameters).

/// The app's state path, normalized once: every request's path is compared with it.
#[derive(Clone, Debug)]
pub struct StatePath {
    /// Its normalized segments; `None` when it does not decode (then no request names it).
    segments: Option<Vec<String>>,
}

impl StatePath {
    pub fn new(state_path: &str) -> StatePath {
        StatePath { segments: normalize(state_path) }
    }

    /// Whether `request_path` (the path of a request URI, without the query) names this path.
    pub fn named_by(&self, request_path: &str) -> bool {
        let Some(wanted) = &self.segments else { return false };
        // Every request is checked: the common path, with nothing to decode or fold, is compared
        // segment by segment without allocating (it normalizes to its non-empty segments).
        if is_plain(request_path) {
            return plain_segments(request_path).eq(wanted.iter().map(String::as_str));
        }
        // A path that cannot be decoded is not routed by any framework as the state path either,
        // but refuse it all the same when its raw form matches.
        normalize(request_path).is_some_and(|p| p == *wanted)
    }
}

/// A path that [`normalize`] leaves as its non-empty segments: ASCII without upper case, `%`,
/// `\` or `;`, and no `.` or `..` segment.
fn is_plain(path: &str) -> bool {
    path.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase() && !matches!(b, b'%' | b'\\' | b';'))
        // Most paths have no dot at all: one scan, rather than splitting every path.
        && (!path.contains('.') || !path.split('/').any(|s| s == "." || s == ".."))
}

fn plain_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Lowercase segments, percent-decoded, without `;params`, empty and `.` segments, with `..`
/// applied. `None` when the path is not valid UTF-8 after decoding.
fn normalize(path: &str) -> Option<Vec<String>> {
    // Decoding may reveal `/` (`%2F`), so decode first, then split.
    let decoded = percent_decode(path)?;
    let mut out: Vec<String> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_lowercase()),
        }
    }
    Some(out)
}

/// `%XX` decoded (repeatedly, so `%252F` is also seen as `/`), bounded.
fn percent_decode(path: &str) -> Option<String> {
    let mut current = path.to_owned();
    // Three rounds cover any double or triple encoding a chain of proxies may leave; the path's
    // length bounds the work of each.
    for _ in 0..3 {
        if !current.contains('%') {
            break;
        }
        let bytes = current.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
            {
                out.push(h * 16 + l);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        current = String::from_utf8(out).ok()?;
    }
    Some(current)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_state_path(request_path: &str, state_path: &str) -> bool {
        StatePath::new(state_path).named_by(request_path)
    }

    #[test]
    fn every_spelling_of_the_state_path_is_recognised() {
        for p in [
            "/handover/state",
            "/handover/state/",
            "/Handover/STATE",
            "//handover//state",
            "/handover/./state",
            "/x/../handover/state",
            "/handover/state;jsessionid=1",
            "/handover;x=y/state",
            "/handover%2Fstate",
            "/handover%252Fstate",
            "/%68andover/state",
            "/handover\\state",
        ] {
            assert!(names_state_path(p, "/handover/state"), "{p}");
        }
    }

    proptest::proptest! {
        /// The allocation-free comparison of plain paths says what the normalized one says.
        #[test]
        fn plain_paths_compare_as_normalized(request in "[/a-cA.;%2F\\\\]{0,12}", state in "[/a-cA.]{0,8}") {
            let normalized = normalize(&state).is_some_and(|w| normalize(&request).is_some_and(|p| p == w));
            proptest::prop_assert_eq!(names_state_path(&request, &state), normalized);
        }
    }

    #[test]
    fn other_paths_pass() {
        for p in ["/", "/handover", "/handover/states", "/handover/state/x", "/state", "/handover/sta%74e2", "/%ff"] {
            assert!(!names_state_path(p, "/handover/state"), "{p}");
        }
    }
}
