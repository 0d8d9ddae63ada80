use std::process::ExitCode;

use clap::Parser;
use shutoff_chaos::Settings;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    let deadline = settings.deadline();
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("shutoff-chaos: cannot install signal handlers");
        return ExitCode::from(2);
    };
    // On a signal the run's future is dropped, and with it every child
    // process (stopped) and the work dir (deleted): see `processes::Proc`.
    let result = tokio::select! {
        r = tokio::time::timeout(deadline, shutoff_chaos::run(settings)) => {
            r.unwrap_or_else(|_| Err(anyhow::anyhow!("the run took longer than {deadline:?}")))
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        _ = hup.recv() => Err(anyhow::anyhow!("hung up")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shutoff-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
