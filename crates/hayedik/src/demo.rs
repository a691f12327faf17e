//! `hayedik demo`: the whole system in one process on loopback.
//! (Filled in below.)

use tokio_util::sync::CancellationToken;

pub async fn run(_cancel: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("demo: not built yet")
}
