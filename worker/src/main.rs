use anyhow::Context;
use clap::Parser;
use shutoff_worker::{Settings, Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    shutoff_core::telemetry::init(settings.common.log_format);
    let worker = Worker::build(settings).await?;
    let shutdown =
        shutoff_core::shutdown::on_signal().context("cannot install the SIGTERM handler")?;
    worker.run_until_stopped(shutdown).await
}
