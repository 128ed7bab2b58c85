//! The operator's one error type.

/// Everything a reconcile (or the operator's startup) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("{action}: {}", short(source))]
    Kube {
        /// What the operator was doing (`apply Service shop/cart`).
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the ServerPool's finalizer failed, or its cleanup did.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// One or more child objects could not be applied; the pool's conditions name them.
    #[error("{} child object(s) failed: {}", .0.len(), .0.join("; "))]
    Children(Vec<String>),
    /// An object under the name of one of the pool's children exists and is not the pool's: the
    /// operator takes over no object it did not make (a Service of the app's own, named like the
    /// pool, would have its selector, ports and type rewritten, and be deleted with the pool).
    #[error(
        "{kind} {namespace}/{name} exists and was not made for this pool: the operator does not take it over (rename the pool, or move that {kind} out of its way)"
    )]
    NotOurs { kind: String, namespace: String, name: String },
    /// The operating system's random source failed (no key could be generated).
    #[error("random source: {0}")]
    Random(String),
    /// A watch-fed cache never became ready.
    #[error("cache of {0} not ready")]
    StoreNotReady(&'static str),
    /// A Kubernetes object lacks a field the API server always sets.
    #[error("object without {0}")]
    MissingField(&'static str),
    /// This replica's leadership could not be confirmed recently: it must not write.
    #[error("not the confirmed leader: refusing to write")]
    NotLeader,
    /// Serving metrics failed.
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
}

/// An API error as a person wants it in a condition: the server's message and code.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} (HTTP {})", status.message, status.code),
        other => other.to_string(),
    }
}

impl Error {
    /// Short label for the `handover_operator_reconcile_errors_total{error=...}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Finalizer(_) => "finalizer",
            Error::Children(_) => "children",
            Error::NotOurs { .. } => "not_ours",
            Error::Random(_) => "random",
            Error::StoreNotReady(_) => "store_not_ready",
            Error::MissingField(_) => "missing_field",
            Error::NotLeader => "not_leader",
            Error::Io(_) => "io",
        }
    }

    /// Wraps a Kubernetes API error with what the operator was doing.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_short_metric_label() {
        let errors = [
            Error::Children(vec!["a".into(), "b".into()]),
            Error::Random("x".into()),
            Error::StoreNotReady("pods"),
            Error::MissingField("metadata.namespace"),
            Error::NotOurs { kind: "Service".into(), namespace: "shop".into(), name: "cart".into() },
        ];
        let labels: Vec<&str> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels, ["children", "random", "store_not_ready", "missing_field", "not_ours"]);
        assert_eq!(errors[0].to_string(), "2 child object(s) failed: a; b");
    }
}
