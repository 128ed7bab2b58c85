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

/// The repository of an image reference: without its `@digest` and its `:tag` (a `:` before the
/// last `/` is a registry port, not a tag). `registry.example:5000/acme/handover:1.2@sha256:…`
/// → `registry.example:5000/acme/handover`.
pub fn image_repository(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(name, _digest)| name);
    match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => name,
    }
}

/// The sidecar images the operator lets a pool choose (`--sidecar-image-allow`).
///
/// An entry ending in `/` allows every image under that path (`registry.example/acme/`); any
/// other entry is a repository and allows exactly it, with any tag or digest
/// (`registry.example/acme/handover` allows `…/handover:1.2` and `…/handover@sha256:…`, not
/// `…/handover-debug`). Entries match the reference as written: `handover` and
/// `docker.io/library/handover` are different entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageAllowList {
    entries: Vec<String>,
}

impl ImageAllowList {
    /// The given entries; without any, the repository of `default_image` alone (the operator
    /// injects its own build; a pool may pin another tag or digest of it, nothing else).
    pub fn new(entries: Vec<String>, default_image: &str) -> Self {
        let entries: Vec<String> = entries.into_iter().map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect();
        if !entries.is_empty() {
            return Self { entries };
        }
        let repository = image_repository(default_image.trim());
        Self { entries: if repository.is_empty() { Vec::new() } else { vec![repository.to_owned()] } }
    }

    /// The entries, for messages and logs.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether a pool may run `image` as its sidecar.
    pub fn allows(&self, image: &str) -> bool {
        // A path segment `..` means nothing to a registry, but a reader of the allow-list must
        // not have to wonder whether `acme/../other` is under `acme/`.
        if image.split('/').any(|segment| segment == ".." || segment.is_empty()) {
            return false;
        }
        self.entries.iter().any(|entry| {
            if entry.ends_with('/') {
                image.len() > entry.len() && image.starts_with(entry.as_str())
            } else {
                image.strip_prefix(entry.as_str()).is_some_and(is_tag_and_digest)
            }
        })
    }
}

/// Whether `rest`, what follows a repository in an image reference, is at most a tag and a digest
/// (`:1.3`, `@sha256:…`, `:1.3@sha256:…`; the OCI distribution grammar), and nothing that makes
/// the repository part of another name: `handover:5000/evil/miner` is the repository
/// `evil/miner` on the registry host `handover`, port 5000, not a tag of `handover`.
fn is_tag_and_digest(rest: &str) -> bool {
    let (tag, digest) = match rest.split_once('@') {
        Some((tag, digest)) => (tag, Some(digest)),
        None => (rest, None),
    };
    let tag_ok = tag.is_empty()
        || tag.strip_prefix(':').is_some_and(|t| {
            t.len() <= 128
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        });
    let digest_ok = digest.is_none_or(|d| {
        d.split_once(':').is_some_and(|(algorithm, encoded)| {
            let separated = |s: &str, part: fn(char) -> bool| {
                !s.is_empty() && s.split(['+', '.', '_', '-']).all(|p| !p.is_empty() && p.chars().all(part))
            };
            separated(algorithm, |c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && !encoded.is_empty()
                && encoded.chars().all(|c| c.is_ascii_alphanumeric() || "=_-".contains(c))
        })
    });
    tag_ok && digest_ok
}

/// Every problem of the pool's spec; empty when it is valid. `default_image` is the operator's
/// `--sidecar-image`; `allowed` the images a pool may choose instead.
pub fn validate(pool: &ServerPool, default_image: &str, allowed: &ImageAllowList) -> Vec<SpecProblem> {
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
        ("spec.snapshot.statePort", spec.snapshot.state_port),
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
    for (field, port) in
        [("appPort", spec.app_port), ("sidecarPort", spec.sidecar_port), ("adminPort", spec.admin_port)]
    {
        if spec.snapshot.state_port == port {
            out.push(problem(
                "spec.snapshot.statePort",
                format!(
                    "statePort and {field} are both {port}: the app serves its state endpoint on a listener of its own"
                ),
            ));
        }
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
    check_duration(&mut out, "spec.cookie.maxAge", &cookie.max_age, Duration::from_secs(1));
    if let Some(absolute) =
        check_duration(&mut out, "spec.cookie.absoluteTimeout", &cookie.absolute_timeout, Duration::ZERO)
        && !absolute.is_zero()
        && absolute < Duration::from_secs(1)
    {
        out.push(problem("spec.cookie.absoluteTimeout", "must be 0s (none) or at least 1s"));
    }
    if !(1024..=65536).contains(&cookie.max_bytes) {
        out.push(problem("spec.cookie.maxBytes", format!("{} is outside 1024-65536", cookie.max_bytes)));
    }
    if !(0..=2048).contains(&cookie.inline_state_bytes) {
        out.push(problem("spec.cookie.inlineStateBytes", format!("{} is outside 0-2048", cookie.inline_state_bytes)));
    }
    for (field, bytes) in [
        ("spec.cookie.maxResponseHeaderBytes", cookie.max_response_header_bytes),
        ("spec.cookie.maxRequestHeaderBytes", cookie.max_request_header_bytes),
    ] {
        if !(1024..=1_048_576).contains(&bytes) {
            out.push(problem(field, format!("{bytes} is outside 1024-1048576")));
        }
    }
    // What the sidecar would refuse at its start (a crash loop), refused here (a status), by the
    // one check both take: the name, path, domain, their prefixes' rules, SameSite=None without
    // Secure. An empty name is the pool's own, derived by the sidecar, and valid with any
    // attributes.
    let attrs = handover_common::cookie_attrs::Attrs {
        name: if cookie.name.is_empty() { "handover".to_owned() } else { cookie.name.clone() },
        path: cookie.path.clone(),
        domain: cookie.domain.clone(),
        secure: cookie.secure,
        same_site: cookie.same_site.as_str().to_owned(),
    };
    if let Err(why) = handover_common::cookie_attrs::validate(&attrs) {
        out.push(problem("spec.cookie", why));
    }
    if !(0..=1_073_741_824).contains(&spec.sidecar.backup_max_bytes) {
        out.push(problem(
            "spec.sidecar.backupMaxBytes",
            format!("{} is outside 0-1073741824", spec.sidecar.backup_max_bytes),
        ));
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
    check_duration(&mut out, "spec.sidecar.responseTimeout", &spec.sidecar.response_timeout, Duration::ZERO);
    // At least 5 s: peers reuse a connection to a sidecar only within 1 s of its last answer, so
    // that the sidecar never closes one as a forward goes out on it.
    check_duration(&mut out, "spec.sidecar.keepaliveTimeout", &spec.sidecar.keepalive_timeout, Duration::from_secs(5));
    if let Ok(d) = duration::parse(&spec.sidecar.drain_grace)
        && d > Duration::from_secs(3600)
    {
        out.push(problem("spec.sidecar.drainGrace", "at most 1h: it delays every pod's termination"));
    }
    match spec.sidecar.image.as_deref() {
        None if default_image.trim().is_empty() => out.push(problem(
            "spec.sidecar.image",
            "no sidecar image: set spec.sidecar.image or the operator's --sidecar-image",
        )),
        None => {}
        // The image runs in every pod of the pool with the pool's key mounted: a pool's author
        // may choose among the images the operator's installer allowed, not any image.
        Some(image) if !allowed.allows(image) => out.push(problem(
            "spec.sidecar.image",
            format!(
                "{image:?} is not allowed by the operator (--sidecar-image-allow: {}); omit spec.sidecar.image for the operator's default",
                if allowed.entries().is_empty() { "nothing".to_owned() } else { allowed.entries().join(", ") }
            ),
        )),
        Some(_) => {}
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

    const DEFAULT_IMAGE: &str = "registry.example/acme/handover:1.2";

    fn allowed() -> ImageAllowList {
        ImageAllowList::new(Vec::new(), DEFAULT_IMAGE)
    }

    fn fields(p: &ServerPool) -> Vec<&'static str> {
        validate(p, DEFAULT_IMAGE, &allowed()).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn default_spec_is_valid() {
        assert_eq!(fields(&pool(ServerPoolSpec::with_app_port(8080))), [""; 0]);
    }

    #[test]
    fn app_port_equal_to_sidecar_port_is_refused_with_a_reason() {
        let p = pool(ServerPoolSpec::with_app_port(8000));
        let problems = validate(&p, "img", &allowed());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.sidecarPort");
        assert!(problems[0].to_string().contains("both 8000"));
    }

    #[test]
    fn a_state_port_shared_with_another_port_is_refused() {
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.snapshot.state_port = 8080;
        assert_eq!(fields(&pool(s.clone())), ["spec.snapshot.statePort"]);
        s.snapshot.state_port = 9901;
        assert_eq!(fields(&pool(s.clone())), ["spec.snapshot.statePort"]);
        s.snapshot.state_port = 8081;
        assert_eq!(fields(&pool(s)), [""; 0]);
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
        s.cookie.absolute_timeout = "500ms".into();
        s.cookie.max_bytes = 100;
        s.cookie.inline_state_bytes = 4096;
        s.cookie.same_site = SameSite::None;
        s.cookie.secure = false;
        assert_eq!(
            fields(&pool(s.clone())),
            [
                "spec.cookie.maxAge",
                "spec.cookie.absoluteTimeout",
                "spec.cookie.maxBytes",
                "spec.cookie.inlineStateBytes",
                "spec.cookie"
            ]
        );
        // The attributes, by the check the sidecar takes at its start: the first problem.
        let cookie_problem = |s: &ServerPoolSpec| {
            validate(&pool(s.clone()), DEFAULT_IMAGE, &allowed())
                .into_iter()
                .find(|p| p.field == "spec.cookie")
                .map(|p| p.message)
        };
        assert!(cookie_problem(&s).is_some_and(|m| m.contains("\"has space\"")), "the name first");
        s.cookie.name = String::new();
        assert!(cookie_problem(&s).is_some_and(|m| m.contains("SameSite=None")), "then SameSite None without Secure");
        s.cookie.absolute_timeout = "1 day".into();
        assert!(fields(&pool(s.clone())).contains(&"spec.cookie.absoluteTimeout"));
        for fine in ["0s", "24h"] {
            s.cookie.absolute_timeout = fine.into();
            assert!(!fields(&pool(s.clone())).contains(&"spec.cookie.absoluteTimeout"), "{fine}");
        }
    }

    #[test]
    fn what_the_schema_refuses_is_refused_again_for_objects_that_bypassed_it() {
        // A pool stored under an older CRD, or edited past it: the sidecar would refuse each of
        // these at its start, again and again.
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.cookie.path = "shop; Domain=evil.example".into();
        s.cookie.domain = "evil example".into();
        s.cookie.max_response_header_bytes = -1;
        s.cookie.max_request_header_bytes = 0;
        s.sidecar.backup_max_bytes = -1;
        assert_eq!(
            fields(&pool(s.clone())),
            [
                "spec.cookie.maxResponseHeaderBytes",
                "spec.cookie.maxRequestHeaderBytes",
                "spec.cookie",
                "spec.sidecar.backupMaxBytes"
            ]
        );
        let message = |s: &ServerPoolSpec| {
            validate(&pool(s.clone()), DEFAULT_IMAGE, &allowed())
                .into_iter()
                .find(|p| p.field == "spec.cookie")
                .map(|p| p.message)
                .unwrap_or_default()
        };
        assert!(message(&s).contains("cookie path"), "{}", message(&s));
        s.cookie.path = "/".into();
        assert!(message(&s).contains("cookie domain"), "{}", message(&s));
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.cookie.name = "__Host-cart".into();
        s.cookie.path = "/shop".into();
        assert!(message(&s).contains("__Host-"), "__Host- needs path /");
        s.cookie.name = "__Secure-cart".into();
        s.cookie.secure = false;
        assert!(message(&s).contains("__Secure-"), "__Secure- needs secure");
    }

    #[test]
    fn snapshot_and_sidecar_problems_are_refused() {
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.snapshot.interval = "0ms".into();
        s.snapshot.state_path = "state".into();
        s.sidecar.drain_grace = "2h".into();
        s.sidecar.keepalive_timeout = "2s".into();
        s.key_rotation.period = Some("1m".into());
        assert_eq!(
            fields(&pool(s)),
            [
                "spec.snapshot.interval",
                "spec.snapshot.statePath",
                "spec.keyRotation.period",
                "spec.sidecar.keepaliveTimeout",
                "spec.sidecar.drainGrace"
            ]
        );
    }

    #[test]
    fn a_missing_sidecar_image_is_refused() {
        let p = pool(ServerPoolSpec::with_app_port(8080));
        let problems = validate(&p, "", &ImageAllowList::new(Vec::new(), ""));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.sidecar.image");
    }

    #[test]
    fn image_repositories_drop_tag_and_digest_but_not_a_registry_port() {
        assert_eq!(image_repository("handover:0.1.0"), "handover");
        assert_eq!(image_repository("handover"), "handover");
        assert_eq!(image_repository("registry.example:5000/acme/handover"), "registry.example:5000/acme/handover");
        assert_eq!(
            image_repository("registry.example:5000/acme/handover:1.2@sha256:0123"),
            "registry.example:5000/acme/handover"
        );
        assert_eq!(image_repository("registry.example/handover@sha256:0123"), "registry.example/handover");
    }

    #[test]
    fn by_default_a_pool_may_pin_only_the_operators_own_repository() {
        let a = allowed();
        assert_eq!(a.entries(), ["registry.example/acme/handover"]);
        assert!(a.allows("registry.example/acme/handover:1.3"));
        assert!(a.allows("registry.example/acme/handover@sha256:0123"));
        assert!(a.allows("registry.example/acme/handover"));
        assert!(a.allows("registry.example/acme/handover:1.3@sha256:0123abcd"));
        assert!(a.allows("registry.example/acme/handover:v1.3_rc-1"));
        // The chart's default repository has no registry host: a port after it is one.
        let bare = ImageAllowList::new(Vec::new(), "handover:0.1.0");
        assert!(bare.allows("handover:0.2.0"));
        assert!(!bare.allows("handover:5000/evil/miner:latest"));
        for refused in [
            "registry.example/acme/handover-debug:1",
            "registry.example/acme/handoverx",
            "registry.example/acme/handover:",
            "registry.example/acme/other:1",
            "evil.example/acme/handover:1.2",
            "registry.example/acme/handover/../x:1",
            // A "tag" that makes the repository a registry host of its own.
            "registry.example/acme/handover:5000/evil/miner:latest",
            "registry.example/acme/handover:443/x@sha256:0123",
            "registry.example/acme/handover@sha256:0123/x",
            "registry.example/acme/handover@sha256",
            "registry.example/acme/handover:-1",
            "registry.example/acme/handover:1.3@",
        ] {
            assert!(!a.allows(refused), "{refused} must be refused");
        }
    }

    #[test]
    fn an_allow_list_entry_ending_in_a_slash_allows_the_whole_path() {
        let a = ImageAllowList::new(vec!["registry.example/acme/".into(), " mirror.example/handover ".into()], "x");
        assert!(a.allows("registry.example/acme/anything:1"));
        assert!(a.allows("mirror.example/handover:2"));
        assert!(!a.allows("registry.example/acme/"));
        assert!(!a.allows("registry.example/acme/../other:1"));
        assert!(!a.allows("registry.example/acme//x:1"));
        assert!(!a.allows("registry.example/acmeother/x:1"));
        assert!(!a.allows("x:1"), "explicit entries replace the default");
    }

    #[test]
    fn a_sidecar_image_outside_the_allow_list_is_an_invalid_spec() {
        let mut s = ServerPoolSpec::with_app_port(8080);
        s.sidecar.image = Some("evil.example/miner:latest".into());
        let problems = validate(&pool(s.clone()), DEFAULT_IMAGE, &allowed());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "spec.sidecar.image");
        assert!(problems[0].message.contains("registry.example/acme/handover"), "{}", problems[0]);
        s.sidecar.image = Some("registry.example/acme/handover:1.1".into());
        assert_eq!(fields(&pool(s.clone())), [""; 0]);
        let nothing = ImageAllowList::new(Vec::new(), "");
        let problems = validate(&pool(s), "", &nothing);
        assert_eq!(problems.len(), 1, "with no default image nothing is allowed: {problems:?}");
    }
}
