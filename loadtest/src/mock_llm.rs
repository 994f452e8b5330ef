//! `mock-llm [--listen ADDR] [--name NAME]`: run the mock OpenAI-compatible LLM until Ctrl-C.

use loadtest::MockLlm;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:9100".to_string();
    let mut name = "mock-llm".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(value)) => listen = value,
            ("--name", Some(value)) => name = value,
            _ => {
                eprintln!("usage: mock-llm [--listen 127.0.0.1:9100] [--name mock-llm]");
                std::process::exit(2);
            }
        }
    }
    let addr = listen.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
    })?;
    let llm = MockLlm::start_on(addr, &name).await?;
    println!("mock LLM `{name}` listening on {}", llm.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
