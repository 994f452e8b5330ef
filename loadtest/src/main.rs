//! `mock-origin [--listen ADDR] [--name NAME]`: run the mock origin until Ctrl-C (benchmarks, manual tries).

use loadtest::{listen_args, MockOrigin};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (addr, name, _) = listen_args("mock-origin", "127.0.0.1:9000", "origin", &[]);
    let origin = MockOrigin::start_on(addr, &name, false).await?;
    println!("mock origin `{name}` listening on http://{}", origin.addr);
    tokio::signal::ctrl_c().await
}
