//! `rayhead probe WHAT`: the exec probe, which asks the running rayhead's
//! probe server and prints its answer.

use clap::Args;

use super::{Cli, ConfigArgs};
use crate::exit;
use crate::probe::routes::Endpoint;

/// `rayhead probe WHAT`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EndpointArg {
    /// GET /readyz
    Ready,
    /// GET /livez
    Live,
    /// GET /status
    Status,
    /// GET /metrics
    Metrics,
}

impl From<EndpointArg> for Endpoint {
    fn from(a: EndpointArg) -> Endpoint {
        match a {
            EndpointArg::Ready => Endpoint::Ready,
            EndpointArg::Live => Endpoint::Live,
            EndpointArg::Status => Endpoint::Status,
            EndpointArg::Metrics => Endpoint::Metrics,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct ProbeArgs {
    what: EndpointArg,
    /// The server's base URL; default from probe.listen.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// `--url` asks that server; otherwise the Unix socket (`probe.socket`),
/// which no network flood can crowd out, when it answers, else
/// `probe.listen`.
pub(super) fn probe(cli: &Cli, args: &ProbeArgs) -> u8 {
    use crate::probe::client;
    let path = Endpoint::from(args.what).path();
    let (ok, text) = match &args.url {
        Some(u) => client::query(u, path),
        None => match cli.load(&args.config) {
            Ok(cfg) => {
                let place = crate::probe::socket::SocketPlace::of(&cfg.probe.socket);
                place
                    .and_then(|p| client::query_socket(&p, path))
                    .unwrap_or_else(|| client::query(&client::base_url(cfg.probe.listen), path))
            }
            Err(e) => {
                crate::logging::err(&format!("rayhead: {e}"));
                return exit::CONFIG;
            }
        },
    };
    let text = text.trim_end();
    if ok {
        crate::logging::out(&format!("{text}\n"));
        0
    } else {
        crate::logging::err(&format!("{text}\n"));
        1
    }
}
