//! `handover-operator`: `crd` prints the CRD, `run` runs the operator.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use handover_common::logging::{LogFormat, init_logging};
use handover_operator::controller::{self, Settings};
use handover_operator::error::Error;
use handover_operator::leader::{Elector, Timing};
use handover_operator::metrics::{self, Metrics};
use handover_operator::validate::ImageAllowList;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;

/// Kubernetes operator for handover ServerPools.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the ServerPool CustomResourceDefinition as YAML (what crds/serverpool.yaml holds).
    Crd,
    /// Run the operator.
    Run(Box<RunArgs>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "HANDOVER_METRICS_ADDR", default_value = "[::]:8080")]
    metrics_addr: SocketAddr,

    /// Name of the leader-election Lease.
    #[arg(long, env = "HANDOVER_LEASE_NAME", default_value = "handover-operator")]
    lease_name: String,

    /// Namespace of the Lease. Default: the namespace of the in-cluster service account or the
    /// kubeconfig context.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,

    /// This replica's identity in the Lease and in Events. Default: $HOSTNAME.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Sidecar image injected when a ServerPool does not name one.
    #[arg(long, env = "HANDOVER_SIDECAR_IMAGE", default_value = "")]
    sidecar_image: String,

    /// Images a ServerPool may name in `spec.sidecar.image` (repeat, or comma-separated). An
    /// entry ending in `/` allows every image under that path; any other entry is a repository
    /// and allows it with any tag or digest. Default: the repository of --sidecar-image only.
    #[arg(long = "sidecar-image-allow", env = "HANDOVER_SIDECAR_IMAGE_ALLOW", value_delimiter = ',')]
    sidecar_image_allow: Vec<String>,

    /// Namespaces to watch (repeat, or comma-separated). Default: every namespace. With a list,
    /// the operator needs its role in those namespaces only (the chart's `watchNamespaces`).
    #[arg(long = "watch-namespaces", env = "HANDOVER_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,

    /// Log format.
    #[arg(long, env = "HANDOVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `info,kube=debug`.
    #[arg(long, env = "HANDOVER_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match handover_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("handover-operator: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            init_logging(&args.log_level, args.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("handover-operator: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "handover-operator failed");
                    eprintln!("handover-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// How long running reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(args: RunArgs) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let listener = handover_common::net::listen(args.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(metrics::serve_on(listener, metrics.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let client = Client::try_default().await.map_err(Error::kube("build a Kubernetes client"))?;
    let lease_namespace = args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("handover-operator-{}", std::process::id()));
    client.apiserver_version().await.map_err(Error::kube("reach the API server"))?;
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(%identity, lease = %args.lease_name, namespace = %lease_namespace, "standing for leader");

    let allowed_images = ImageAllowList::new(args.sidecar_image_allow.clone(), &args.sidecar_image);
    tracing::info!(allowed = ?allowed_images.entries(), "sidecar images a pool may choose");
    let settings = Settings {
        default_image: args.sidecar_image.clone(),
        allowed_images,
        namespaces: args.watch_namespaces.clone(),
        identity: identity.clone(),
    };
    let mut elector = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &lease_namespace),
        args.lease_name.clone(),
        identity,
        Timing::default(),
    );
    let mut stop = stop_rx.clone();
    loop {
        if !elector.acquire(&mut stop).await {
            break;
        }
        tracing::info!("became leader");
        metrics.leader.set(1);
        let work = controller::run(
            client.clone(),
            settings.clone(),
            metrics.clone(),
            elector.leadership(),
            stopped(stop_rx.clone()),
        );
        let outcome = tokio::select! {
            result = work => result,
            () = async {
                stopped(stop_rx.clone()).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("running reconciles did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
            () = elector.keep_renewing() => {
                // Dropping the controller here stops every write before the Lease expires.
                tracing::warn!("lost leadership; standing by");
                Ok(())
            }
        };
        metrics.leader.set(0);
        if *stop_rx.borrow() {
            elector.release().await;
            break;
        }
        if let Err(e) = outcome {
            tracing::error!(error = %e, "controller stopped");
            elector.release().await;
            tokio::time::sleep(elector.timing().retry_period).await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_run_flags() {
        let cli = Cli::try_parse_from([
            "handover-operator",
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--lease-namespace",
            "handover-system",
            "--identity",
            "op-0",
            "--sidecar-image",
            "handover-sidecar:dev",
            "--log-format",
            "json",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(args.watch_namespaces.is_empty(), "every namespace by default");
        assert!(args.sidecar_image_allow.is_empty(), "the default image's repository by default");
        assert_eq!(args.lease_name, "handover-operator");
        assert_eq!(args.identity.as_deref(), Some("op-0"));
    }

    #[test]
    fn cli_takes_lists_of_namespaces_and_allowed_images_comma_separated_or_repeated() {
        let cli = Cli::try_parse_from([
            "handover-operator",
            "run",
            "--watch-namespaces",
            "shop,web",
            "--watch-namespaces",
            "blog",
            "--sidecar-image-allow",
            "registry.example/acme/,mirror.example/handover",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(args.watch_namespaces, ["shop", "web", "blog"]);
        assert_eq!(args.sidecar_image_allow, ["registry.example/acme/", "mirror.example/handover"]);
    }

    #[test]
    fn cli_refuses_an_unknown_log_format() {
        assert!(Cli::try_parse_from(["handover-operator", "run", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
