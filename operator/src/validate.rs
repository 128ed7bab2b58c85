//! Checks of a `ServerPool` spec, in Rust. The CRD schema refuses most of these already; the
//! operator checks again because an object can reach it past an older or edited CRD, and it must
//! answer a bad spec with a condition and an Event, never with a crash.

use std::time::Duration;

use crate::crd::ServerPool;
use crate::duration;

/// Shortest allowed `keyRotation.period`: a rotation must finish (stage, then promote) first.
pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(600);

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// The field, as a path from the object root (`spec.appPort`).
    pub field: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn problem(field: &'static str, message: impl Into<String>) -> SpecProblem {
    SpecProblem { field, message: message.into() }
}

/// Whether `name` is a DNS-1035 label (what a Service name must be).
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last() != Some(&b'-')
}

/// Whether `name` is a DNS-1123 subdomain (what a Secret name must be).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first() != Some(&b'-')
                && b.last() != Some(&b'-')
        })
}

/// Whether `value` is a valid label value.
fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// Whether `key` is a valid label key (`[prefix/]name`).
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

fn check_duration(out: &mut Vec<SpecProblem>, field: &'static str, text: &str, min: Duration) -> Option<Duration> {
    match duration::parse(text) {
        Ok(d) if d < min => {
            out.push(problem(field, format!("{text} is shorter than the minimum {min:?}")));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            out.push(problem(field, e.to_string()));
            None
        }
    }
}

/// Every problem of the pool's spec; empty when it is valid. `default_image` is the operator's
/// `--sidecar-image`.
pub fn validate(pool: &ServerPool, default_image: &str) -> Vec<SpecProblem> {
    let mut out = Vec::new();
    let spec = &pool.spec;
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    if !is_dns1035_label(name) {
        out.push(problem(
            "metadata.name",
            format!("{name:?} is not a DNS-1035 label (at most 63 characters, lowercase letters, digits and '-', starting with a letter); it names the pool's Service"),
        ));
    }
    for (field, port) in [
        ("spec.appPort", spec.app_port),
        ("spec.port", spec.port),
        ("spec.sidecarPort", spec.sidecar_port),
        ("spec.adminPort", spec.admin_port),
    ] {
        if !(1..=65535).contains(&port) {
            out.push(problem(field, format!("{port} is not a port (1-65535)")));
        }
    }
    if spec.app_port == spec.sidecar_port {
        out.push(problem(
            "spec.sidecarPort",
            format!("appPort and sidecarPort are both {}: the sidecar listens on sidecarPort and forwards to the app on appPort", spec.app_port),
        ));
    }
    if spec.app_port == spec.admin_port {
        out.push(problem("spec.adminPort", format!("appPort and adminPort are both {}", spec.app_port)));
    }
    if spec.sidecar_port == spec.admin_port {
        out.push(problem("spec.adminPort", format!("sidecarPort and adminPort are both {}", spec.admin_port)));
    }
    if let Some(selector) = &spec.selector {
        if selector.is_empty() {
            out.push(problem("spec.selector", "an empty selector would select every pod; omit it for the default"));
        }
        for (k, v) in selector {
            if !is_label_key(k) || !is_label_value(v) {
                out.push(problem("spec.selector", format!("{k}={v} is not a valid label")));
            }
        }
    }
    let cookie = &spec.cookie;
    if cookie.name.is_empty()
        || cookie.name.len() > 64
        || !cookie.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        out.push(problem("spec.cookie.name", format!("{:?} must be 1-64 of A-Z a-z 0-9 _ -", cookie.name)));
    }
    check_duration(&mut out, "spec.cookie.maxAge", &cookie.max_age, Duration::from_secs(1));
    if !(1024..=65536).contains(&cookie.max_bytes) {
        out.push(problem("spec.cookie.maxBytes", format!("{} is outside 1024-65536", cookie.max_bytes)));
    }
    if cookie.same_site == crate::crd::SameSite::None && !cookie.secure {
        out.push(problem("spec.cookie.sameSite", "SameSite=None requires secure: true (browsers reject it otherwise)"));
    }
    check_duration(&mut out, "spec.snapshot.interval", &spec.snapshot.interval, Duration::from_millis(1));
    if !spec.snapshot.state_path.starts_with('/')
        || spec.snapshot.state_path.chars().any(|c| c.is_whitespace() || c == '?' || c == '#')
    {
        out.push(problem(
            "spec.snapshot.statePath",
            format!("{:?} must be an absolute path without spaces, query or fragment", spec.snapshot.state_path),
        ));
    }
    if let Some(secret) = &spec.key_secret_name
        && !is_dns1123_subdomain(secret)
    {
        out.push(problem("spec.keySecretName", format!("{secret:?} is not a valid Secret name")));
    }
    if let Some(period) = &spec.key_rotation.period {
        check_duration(&mut out, "spec.keyRotation.period", period, MIN_ROTATION_PERIOD);
    }
    check_duration(&mut out, "spec.sidecar.drainGrace", &spec.sidecar.drain_grace, Duration::ZERO);
    if let Ok(d) = duration::parse(&spec.sidecar.drain_grace)
        && d > Duration::from_secs(3600)
    {
        out.push(problem("spec.sidecar.drainGrace", "at most 1h: it delays every pod's termination"));
    }
    let image = spec.sidecar.image.as_deref().unwrap_or(default_image);
    if image.trim().is_empty() {
        out.push(problem(
            "spec.sidecar.image",
            "no sidecar image: set spec.sidecar.image or the operator's --sidecar-image",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SameSite, ServerPoolSpec};
    use std::collections::BTreeMap;

    fn pool(spec: ServerPoolSpec) -> ServerPool {
        ServerPool::new("cart", spec)
    }

    fn fields(p: &ServerPool) -> Vec<&'static str> {
        validate(p, "handover-sidecar:dev").into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn default_spec_is_valid() {
        assert_eq!(fields(&pool(ServerPoolSpec::with_app_port(8080))), [""; 0]);
    }

    #[test]
    fn app_port_equal_to_sidecar_port_is_refused_with_a_reason() {
        let p = pool(ServerPoolSpec::with_app_port(8000));
        let problems = validate(&p, "img");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.sidecarPort");
        assert!(problems[0].to_string().contains("both 8000"));
    }

    #[test]
    fn admin_port_clashes_are_refused() {
        let mut s = ServerPoolSpec::with_app_port(9901);
        assert_eq!(fields(&pool(s.clone())), ["spec.adminPort"]);
        s.app_port = 8080;
        s.sidecar_port = 9901;
        assert_eq!(fields(&pool(s)), ["spec.adminPort"]);
    }

    #[test]
    fn ports_out_of_range_are_refused() {
        let mut s = ServerPoolSpec::with_app_port(0);
        s.port = 70000;
        assert_eq!(fields(&pool(s)), ["spec.appPort", "spec.port"]);
    }

    #[test]
    fn bad_names_are_refused() {
        let p = ServerPool::new("Cart_1", ServerPoolSpec::with_app_port(8080));
        assert_eq!(fields(&p), ["metadata.name"]);
        let long = "a".repeat(64);
        let p = ServerPool::new(&long, ServerPoolSpec::with_app_port(8080));
        assert_eq!(fields(&p), ["metadata.name"]);
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.key_secret_name = Some("Not A Name".into());
        assert_eq!(fields(&pool(s)), ["spec.keySecretName"]);
    }

    #[test]
    fn selectors_must_be_non_empty_valid_labels() {
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.selector = Some(BTreeMap::new());
        assert_eq!(fields(&pool(s.clone())), ["spec.selector"]);
        s.selector = Some(BTreeMap::from([("app".into(), "bad value".into())]));
        assert_eq!(fields(&pool(s.clone())), ["spec.selector"]);
        s.selector = Some(BTreeMap::from([("example.com/app".into(), "cart-web".into())]));
        assert_eq!(fields(&pool(s)), [""; 0]);
    }

    #[test]
    fn cookie_problems_are_refused() {
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.cookie.name = "has space".into();
        s.cookie.max_age = "12 hours".into();
        s.cookie.max_bytes = 100;
        s.cookie.same_site = SameSite::None;
        s.cookie.secure = false;
        assert_eq!(
            fields(&pool(s)),
            ["spec.cookie.name", "spec.cookie.maxAge", "spec.cookie.maxBytes", "spec.cookie.sameSite"]
        );
    }

    #[test]
    fn snapshot_and_sidecar_problems_are_refused() {
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.snapshot.interval = "0ms".into();
        s.snapshot.state_path = "state".into();
        s.sidecar.drain_grace = "2h".into();
        s.key_rotation.period = Some("1m".into());
        assert_eq!(
            fields(&pool(s)),
            ["spec.snapshot.interval", "spec.snapshot.statePath", "spec.keyRotation.period", "spec.sidecar.drainGrace"]
        );
    }

    #[test]
    fn a_missing_sidecar_image_is_refused() {
        let p = pool(ServerPoolSpec::with_app_port(8080));
        let problems = validate(&p, "");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.sidecar.image");
    }
}
