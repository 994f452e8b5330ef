//! `mock-llm [--listen ADDR] [--name NAME]`: run the mock OpenAI-compatible LLM until Ctrl-C.

use loadtest::{listen_args, MockLlm};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (addr, name) = listen_args("mock-llm", "127.0.0.1:9100", "mock-llm");
    let llm = MockLlm::start_on(addr, &name).await?;
    println!("mock LLM `{name}` listening on {}", llm.base_url());
    tokio::signal::ctrl_c().await
}
