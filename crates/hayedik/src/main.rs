//! The `hayedik` binary: parse arguments, run, map errors to exit codes
//! (1 at run time, 2 for usage errors, which clap reports itself).
//!
//! It is the face of the library: commands send their events into an
//! [`EventSink`], and `output::write_events` renders them on stdout.
//! Everything it prints goes through `hayedik::output`: a closed or stalled
//! stdout or stderr never fails nor blocks a task, and delays the exit by
//! [`EXIT_FLUSH`] at most (twice: events, then the rest).
//!
//! When a command returns, every task it started is waited for (at most
//! [`hayedik::spawn::SHUTDOWN_WAIT`], then aborted): see `hayedik::spawn`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hayedik::cli::{Cli, Command};
use hayedik::events::{self, Event, EventSink};
use hayedik::output::{self, Priority};
use hayedik::spawn::{Scope, SHUTDOWN_WAIT};
use tokio_util::sync::CancellationToken;

/// Longest wait at exit for queued output to be written (a reader that
/// stopped reading without closing).
const EXIT_FLUSH: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let code = parse_and_run();
    output::flush(EXIT_FLUSH);
    code
}

fn parse_and_run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A usage error is an `error` event too with --json (help and
            // --version are not errors).
            let is_error = !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if is_error && std::env::args().any(|a| a == "--json") {
                let message = e.kind().to_string();
                let detail = e.to_string();
                let first = detail
                    .lines()
                    .next()
                    .map(|l| l.trim_start_matches("error: ").to_string())
                    .unwrap_or(message);
                let (sink, stream) = events::channel(1, false);
                let writer = output::write_events(stream, true);
                sink.emit(Event::error(events::ErrorKind::Usage, first));
                writer.flush(EXIT_FLUSH);
            }
            output::flush(EXIT_FLUSH);
            e.exit()
        }
    };
    init_logs(cli.verbose);
    let json = cli.command.json();
    use std::io::IsTerminal;
    let bars = !json && std::io::stderr().is_terminal();
    let (events, stream) = events::channel(events::QUEUE_EVENTS, bars);
    // The address a peer serves on matters to a tracker's user only.
    let show_listening = matches!(
        cli.command,
        Command::Tracker(_) | Command::Ui(_) | Command::DhtNode(_)
    );
    let qr = matches!(&cli.command, Command::Share(a) if a.qr);
    let writer = output::write_events_for(stream, json, show_listening, qr);
    // A tracker without a relay answers datagrams of microseconds each: one
    // thread serves them without handing work from thread to thread (the
    // store still writes on the blocking pool, and on Linux the swarm
    // sockets have a loop of their own there). The relay forwards streams
    // and gets every core, as does everything else.
    let runtime = match &cli.command {
        Command::Tracker(args) if !args.relay => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let code = match runtime {
        Ok(runtime) => match runtime.block_on(run_scoped(cli, events.clone())) {
            Ok(code) => code,
            Err(e) => fail(&events, json, e),
        },
        Err(e) => fail(
            &events,
            json,
            anyhow::anyhow!("cannot start the runtime: {e}"),
        ),
    };
    drop(events);
    writer.flush(EXIT_FLUSH);
    code
}

/// Runs the command in its own task scope, then waits for what it started.
async fn run_scoped(cli: Cli, events: EventSink) -> anyhow::Result<ExitCode> {
    // Swarm trackers and peer connections each hold a descriptor.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cancel = CancellationToken::new();
    // Outside the command's scope: it outlives the command.
    hayedik::spawn::cancel_on_signals(cancel.clone());
    let scope = Scope::new("command");
    let result = scope.run(run(cli, events, cancel.clone())).await;
    cancel.cancel();
    scope.shutdown(SHUTDOWN_WAIT).await;
    result
}

/// Logs are for whoever asks (`-v`, `RUST_LOG`): by default only errors
/// no event reports reach stderr, and everything meant for the user is an
/// event printed by the face. `-v` and `-vvv` print `LEVEL: message`;
/// `-vv` and up, or `RUST_LOG`, the full format with times and the tasks'
/// spans.
fn init_logs(verbose: u8) {
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let detailed = from_env.is_some() || verbose >= 2;
    let filter = from_env.unwrap_or_else(|| {
        tracing_subscriber::EnvFilter::new(match verbose {
            0 => "error",
            1 => "info",
            2 => "debug",
            _ => "trace",
        })
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(output::LogWriter::default)
        // Its own report of a failed write is an `eprintln!`, which panics
        // on a closed stderr (in whichever task logged).
        .log_internal_errors(false)
        .with_target(false);
    if detailed {
        builder.init();
    } else {
        builder.event_format(PlainLog).init();
    }
}

/// A log line without time nor spans: `warn: message key=value`.
struct PlainLog;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        write!(writer, "{level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// One clear line on stderr (and an `error` event with `--json`), exit 1.
fn fail(events: &EventSink, json: bool, e: anyhow::Error) -> ExitCode {
    let message = format!("{e:#}");
    output::stderr(format!("error: {message}\n"), Priority::Essential);
    if json {
        events.emit(Event::error(events::kind_of(&e), message));
    }
    ExitCode::from(1)
}

/// The DHT settings of `share`/`get` (flags and config file), or `None`
/// after saying why they are unusable (a usage error: exit 2).
fn dht_or_usage(flags: &hayedik::cli::DhtArgs) -> Option<Option<hayedik::dht::DhtConfig>> {
    let decided = hayedik::config::load()
        .map_err(|e| e.to_string())
        .and_then(|config| flags.decide(&config));
    match decided {
        Ok(d) => Some(d),
        Err(msg) => {
            output::stderr(format!("error: {msg}\n"), Priority::Essential);
            None
        }
    }
}

/// 128 plus the signal that stopped the command (SIGINT when none was
/// seen): an interrupted `get` or `ls`.
fn interrupted() -> ExitCode {
    let signal = hayedik::spawn::received_signal().unwrap_or(hayedik::spawn::SIGINT);
    ExitCode::from(128 + signal)
}

async fn run(cli: Cli, events: EventSink, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Tracker(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(msg) => {
                    output::stderr(format!("error: {msg}\n"), Priority::Essential);
                    return Ok(ExitCode::from(2));
                }
            };
            let socket = tokio::net::UdpSocket::bind(args.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {}: choose another address with --listen",
                        args.listen
                    )
                })?;
            hayedik::tracker::run(socket, config, events.clone(), cancel).await?;
            events.emit(Event::stopped_serving());
            Ok(ExitCode::SUCCESS)
        }
        Command::Share(a) => {
            let Some(dht) = dht_or_usage(&a.dht) else {
                return Ok(ExitCode::from(2));
            };
            let opts = hayedik::peer::share::ShareOptions {
                path: a.path,
                tracker: a.tracker,
                public_host: a.public_host,
                listen: a.listen,
                max_upload: a.max_upload,
                max_peers_per_ip: usize::from(a.max_peers_per_ip),
                until_replicated: a.until_replicated,
                skip_unportable: a.skip_unportable,
                port_mapping: a.port_mapping,
                dht,
            };
            hayedik::peer::share::share(opts, events, cancel, |_| {}).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get(a) => {
            let Some(dht) = dht_or_usage(&a.dht) else {
                return Ok(ExitCode::from(2));
            };
            let opts = hayedik::peer::get::GetOptions {
                ticket: a.ticket,
                out_dir: a.out,
                listen: a.listen,
                seed: !a.no_seed,
                timeout: (!a.timeout.is_zero()).then_some(a.timeout),
                max_upload: a.max_upload,
                max_download: a.max_download,
                only: a.only,
                max_peers_per_ip: usize::from(a.max_peers_per_ip),
                port_mapping: a.port_mapping,
                dht,
            };
            match hayedik::peer::get::get(opts, events, cancel).await? {
                Some(_) => Ok(ExitCode::SUCCESS),
                // Interrupted before it was complete (DESIGN.md): 128 plus
                // the signal, its progress kept.
                None => Ok(interrupted()),
            }
        }
        Command::Ls(a) => {
            let timeout = (!a.timeout.is_zero()).then_some(a.timeout);
            if hayedik::peer::ls::ls(a.ticket, timeout, events, cancel).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(interrupted())
            }
        }
        Command::Ui(a) => {
            let opts = hayedik::ui::UiOptions {
                listen: a.listen,
                public_host: a.public_host,
                open: !a.no_open,
            };
            hayedik::ui::run(opts, events.clone(), cancel).await?;
            events.emit(Event::stopped_serving());
            Ok(ExitCode::SUCCESS)
        }
        Command::DhtNode(a) => {
            let opts = hayedik::dht::node::NodeOptions {
                listen: a.listen,
                bootstrap: a.dht_bootstrap,
                limits: Default::default(),
            };
            hayedik::dht::node::run(opts, events.clone(), cancel).await?;
            events.emit(Event::stopped_serving());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => {
            let opts = hayedik::demo::DemoOptions {
                size: a.size,
                dir: a.dir,
            };
            hayedik::demo::run(opts, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hayedik", &mut buf);
            output::stdout(
                String::from_utf8_lossy(&buf).into_owned(),
                Priority::Essential,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .context("rendering the manual page")?;
            output::stdout(
                String::from_utf8_lossy(&buf).into_owned(),
                Priority::Essential,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
