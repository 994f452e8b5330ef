//! `mock-llm [--listen ADDR] [--name NAME] [--head-delay-ms N] [--first-token-delay-ms N] [--chunks N]
//! [--chunk-delay-ms N]`: run the mock OpenAI-compatible LLM until Ctrl-C (benchmarks, manual tries).

use std::time::Duration;

use loadtest::{listen_args, Behavior, MockLlm};

const FLAGS: &[&str] = &[
    "--head-delay-ms",
    "--first-token-delay-ms",
    "--chunks",
    "--chunk-delay-ms",
];

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (addr, name, options) = listen_args("mock-llm", "127.0.0.1:9100", "mock-llm", FLAGS);
    let mut behavior = Behavior::default();
    for (flag, value) in options {
        let Ok(n) = value.parse::<u64>() else {
            eprintln!("mock-llm: {flag} takes a whole number, not `{value}`");
            std::process::exit(2);
        };
        match flag.as_str() {
            "--head-delay-ms" => behavior.head_delay = Duration::from_millis(n),
            "--first-token-delay-ms" => behavior.first_token_delay = Duration::from_millis(n),
            "--chunks" => behavior.chunks = n.max(1) as usize,
            _ => behavior.chunk_delay = Duration::from_millis(n),
        }
    }
    // One six-character token per chunk, so the text splits into exactly `chunks` pieces. The space leads, as
    // in the tokens real models stream (` world`), and the words are a mix: some end the way a secret may
    // begin (` tests`, ` token`), which the gateway's stream masking holds until the next token.
    const WORDS: [&str; 16] = [
        " hello", " world", " quick", " brown", " model", " cache", " proxy", " fetch", " tests",
        " input", " sigma", " token", " table", " paths", " graph", " layer",
    ];
    behavior.text = Some(
        (0..behavior.chunks)
            .map(|i| WORDS[i % WORDS.len()])
            .collect(),
    );
    let llm = MockLlm::start_on(addr, &name).await?;
    llm.set_behavior(behavior);
    println!("mock LLM `{name}` listening on {}", llm.base_url());
    tokio::signal::ctrl_c().await
}
