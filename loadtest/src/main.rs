//! `mock-origin [--listen ADDR] [--name NAME]`: run the mock origin until Ctrl-C (benchmarks, manual tries).

use loadtest::MockOrigin;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:9000".to_string();
    let mut name = "origin".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(value)) => listen = value,
            ("--name", Some(value)) => name = value,
            _ => {
                eprintln!("usage: mock-origin [--listen 127.0.0.1:9000] [--name origin]");
                std::process::exit(2);
            }
        }
    }
    let addr = listen.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
    })?;
    let origin = MockOrigin::start_on(addr, &name, false).await?;
    println!("mock origin `{name}` listening on http://{}", origin.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
